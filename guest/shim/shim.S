/*
 * gunyah-sim EL2 shim.
 *
 * The small privileged half of the hypervisor.  It only saves, restores and obeys: every
 * decision is made by the Python EL2 service on the other side of the per-CPU mailbox
 * (layout: qemu_bridge/mailbox.py, included here as mailbox.inc).
 *
 * QEMU loads this file as an arm64 "Image" with -kernel and enters it at EL2 with x0 = DTB.
 * The shim configures EL2 so that the guest runs at EL1 with its HVCs and SMCs trapping
 * here, and erets to the entry point Python wrote into the CPU's boot slot.
 */
	.include "mailbox.inc"

/* HCR_EL2 bits */
.equ HCR_RW,   (1 << 31)        /* EL1 is AArch64 */
.equ HCR_TSC,  (1 << 19)        /* trap EL1 SMC to EL2: PSCI and firmware calls come here */
.equ HCR_APK,  (1 << 40)        /* do not trap pointer-authentication key accesses */
.equ HCR_API,  (1 << 41)        /* do not trap pointer-authentication instructions */
.equ HCR_GUEST, (HCR_RW | HCR_TSC | HCR_APK | HCR_API)

.equ SCTLR_EL1_RES1, 0x30d00800 /* RES1 bits, MMU and caches off: the arm64 boot protocol */
.equ SPSR_EL1H_MASKED, 0x3c5    /* EL1h with D, A, I, F masked */
.equ CPTR_EL2_NOTRAP, 0x32ff    /* RES1 bits; FP, SIMD and SVE not trapped */

	.section .text.head, "ax"
	.global _head
_head:
	/* arm64 Image header (Documentation/arm64/booting.rst describes the fields) */
	b	primary_entry			/* code0 */
	.long	0				/* code1 */
	.quad	0				/* text_offset */
	.quad	_image_end - _head		/* image_size */
	.quad	0x8				/* flags: little endian, placeable anywhere */
	.quad	0, 0, 0				/* reserved */
	.ascii	"ARM\x64"			/* magic */
	.long	0				/* reserved (PE offset) */

	.text
/*
 * Per-CPU EL2 set-up.  Out: x9 = this CPU's mailbox, sp = its EL2 stack.
 * Clobbers x10..x13.  Parks the CPU if it has no mailbox.
 */
el2_setup:
	mrs	x10, mpidr_el1
	and	x11, x10, #0xff			/* Aff0 */
	ubfx	x12, x10, #8, #8		/* Aff1: QEMU virt with GICv3 puts 16 CPUs in a cluster */
	add	x11, x11, x12, lsl #4
	cmp	x11, #MB_MAX_CPUS
	b.hs	park
	ldr	x9, =MB_MAILBOX_BASE
	add	x9, x9, x11, lsl #12
	msr	tpidr_el2, x9
	ldr	x12, =MB_STACK_BASE
	add	x11, x11, #1
	add	x12, x12, x11, lsl #12
	mov	sp, x12

	adr	x10, el2_vectors
	msr	vbar_el2, x10
	ldr	x10, =HCR_GUEST
	msr	hcr_el2, x10
	ldr	x10, =CPTR_EL2_NOTRAP
	msr	cptr_el2, x10
	mov	x10, #3				/* EL1 may use the physical counter and timer */
	msr	cnthctl_el2, x10
	msr	cntvoff_el2, xzr
	msr	hstr_el2, xzr
	msr	vttbr_el2, xzr
	mrs	x10, pmcr_el0			/* let EL1 see every PMU counter */
	ubfx	x10, x10, #11, #5
	msr	mdcr_el2, x10
	mrs	x10, midr_el1
	msr	vpidr_el2, x10
	mrs	x10, mpidr_el1
	msr	vmpidr_el2, x10
	mov	x10, #0xf			/* ICC_SRE_EL2: SRE, DFB, DIB, Enable (EL1 may use SRE) */
	msr	ICC_SRE_EL2, x10
	isb
	msr	ICH_HCR_EL2, xzr
	mrs	x10, id_aa64pfr0_el1		/* SVE present: give EL1 the longest vector length */
	ubfx	x10, x10, #32, #4
	cbz	x10, 1f
	mov	x10, #0x1ff
	msr	S3_4_C1_C2_0, x10		/* ZCR_EL2 */
1:	ldr	x10, =SCTLR_EL1_RES1
	msr	sctlr_el1, x10
	mov	x10, #SPSR_EL1H_MASKED
	msr	spsr_el2, x10
	isb
	ret

park:
	wfe
	b	park

/* Boot CPU: QEMU's boot stub enters here at EL2 with x0 = DTB. */
primary_entry:
	mov	x21, x0
	bl	el2_setup
	ldr	x10, [x9, #MB_BOOT_ENTRY]
	msr	elr_el2, x10
	mov	x0, x21
	b	enter_guest

/* Other CPUs: QEMU's PSCI CPU_ON starts them here at EL2 (Python rewrote the entry point). */
	.global secondary_entry
secondary_entry:
	bl	el2_setup
	ldr	x10, [x9, #MB_BOOT_ENTRY]
	msr	elr_el2, x10
	ldr	x0, [x9, #MB_BOOT_CONTEXT]
enter_guest:
	mov	x1, xzr
	mov	x2, xzr
	mov	x3, xzr
	eret

/*
 * Synchronous exception from EL1 (HVC, trapped SMC, anything else): record, ring, wait, obey.
 * x0..x7 come back from the reply; x8..x18 and x30 are preserved here.
 */
el1_sync:
	sub	sp, sp, #96
	stp	x8, x9, [sp, #0]
	stp	x10, x11, [sp, #16]
	stp	x12, x13, [sp, #32]
	stp	x14, x15, [sp, #48]
	stp	x16, x17, [sp, #64]
	stp	x18, x30, [sp, #80]
	mrs	x9, tpidr_el2
	stp	x0, x1, [x9, #MB_X0]
	stp	x2, x3, [x9, #MB_X0 + 16]
	stp	x4, x5, [x9, #MB_X0 + 32]
	stp	x6, x7, [x9, #MB_X0 + 48]
	mov	x10, #MB_KIND_SYNC
	str	x10, [x9, #MB_KIND]
	mrs	x10, esr_el2
	mrs	x11, elr_el2
	stp	x10, x11, [x9, #MB_ESR]
	mrs	x10, spsr_el2
	mrs	x11, far_el2
	stp	x10, x11, [x9, #MB_SPSR]
	mrs	x10, hpfar_el2
	str	x10, [x9, #MB_HPFAR]
	mrs	x10, ttbr0_el1
	mrs	x11, ttbr1_el1
	stp	x10, x11, [x9, #MB_TTBR0_EL1]
	mrs	x10, tcr_el1
	mrs	x11, sctlr_el1
	stp	x10, x11, [x9, #MB_TCR_EL1]
	mrs	x10, mpidr_el1
	str	x10, [x9, #MB_MPIDR]

	/* Ring: publish seq_req + 1 after the record, then wait for seq_ack to match. */
	ldr	x10, [x9, #MB_SEQ_REQ]
	add	x10, x10, #1
	dmb	ish
	str	x10, [x9, #MB_SEQ_REQ]
	.global doorbell
doorbell:				/* the gdb transport's breakpoint sits here */
	nop
1:	ldr	x11, [x9, #MB_SEQ_ACK]
	cmp	x11, x10
	b.ne	1b
	dmb	ish

	/* Obey the reply's commands in order. */
	ldr	x12, [x9, #MB_NCMDS]
	add	x13, x9, #MB_CMDS
next_cmd:
	cbz	x12, cmds_done
	ldp	x14, x15, [x13]			/* op, a */
	ldr	x16, [x13, #16]			/* b */
	cmp	x14, #MB_OP_SMC
	b.eq	cmd_smc
	cmp	x14, #MB_OP_WRITE32
	b.eq	cmd_write32
	cmp	x14, #MB_OP_WRITE64
	b.eq	cmd_write64
	cmp	x14, #MB_OP_MSR
	b.eq	cmd_msr
cmd_done:
	add	x13, x13, #MB_CMD_SIZE
	sub	x12, x12, #1
	b	next_cmd

cmd_smc:
	ldp	x0, x1, [x9, #MB_R_X0]
	ldp	x2, x3, [x9, #MB_R_X0 + 16]
	ldp	x4, x5, [x9, #MB_R_X0 + 32]
	ldp	x6, x7, [x9, #MB_R_X0 + 48]
	smc	#0				/* SMCCC 1.1: x4..x17 survive */
	stp	x0, x1, [x9, #MB_R_X0]
	stp	x2, x3, [x9, #MB_R_X0 + 16]
	b	cmd_done
cmd_write32:
	str	w16, [x15]
	dsb	sy
	b	cmd_done
cmd_write64:
	str	x16, [x15]
	dsb	sy
	b	cmd_done
cmd_msr:
	cmp	x15, #4				/* len(MSR_REGISTERS) */
	b.hs	cmd_done
	adr	x17, msr_gadgets
	add	x17, x17, x15, lsl #3
	br	x17
msr_gadgets:				/* two instructions each, in MSR_REGISTERS order */
	msr	hcr_el2, x16
	b	msr_done
	msr	vttbr_el2, x16
	b	msr_done
	msr	vtcr_el2, x16
	b	msr_done
	msr	cnthctl_el2, x16
	b	msr_done
msr_done:
	isb
	b	cmd_done

cmds_done:
	ldr	x10, [x9, #MB_R_ELR]
	msr	elr_el2, x10
	ldp	x0, x1, [x9, #MB_R_X0]
	ldp	x2, x3, [x9, #MB_R_X0 + 16]
	ldp	x4, x5, [x9, #MB_R_X0 + 32]
	ldp	x6, x7, [x9, #MB_R_X0 + 48]
	ldp	x8, x9, [sp, #0]
	ldp	x10, x11, [sp, #16]
	ldp	x12, x13, [sp, #32]
	ldp	x14, x15, [sp, #48]
	ldp	x16, x17, [sp, #64]
	ldp	x18, x30, [sp, #80]
	add	sp, sp, #96
	eret

/*
 * Any other exception is fatal: tell Python which vector fired (in x0 of the record) and park.
 * The guest's x0/x9/x10 are lost, which no longer matters.
 */
unexpected:
	mrs	x9, tpidr_el2
	str	x0, [x9, #MB_X0]
	mov	x0, #MB_KIND_UNEXPECTED
	str	x0, [x9, #MB_KIND]
	mrs	x0, esr_el2
	str	x0, [x9, #MB_ESR]
	mrs	x0, elr_el2
	str	x0, [x9, #MB_ELR]
	mrs	x0, far_el2
	str	x0, [x9, #MB_FAR]
	ldr	x0, [x9, #MB_SEQ_REQ]
	add	x0, x0, #1
	dmb	ish
	str	x0, [x9, #MB_SEQ_REQ]
	b	park

.macro vector_unexpected offset
	.balign 0x80
	mov	x0, #\offset
	b	unexpected
.endm

	.balign 0x800
el2_vectors:
	vector_unexpected 0x000		/* current EL, SP_EL0 */
	vector_unexpected 0x080
	vector_unexpected 0x100
	vector_unexpected 0x180
	vector_unexpected 0x200		/* current EL, SP_ELx: a bug in the shim */
	vector_unexpected 0x280
	vector_unexpected 0x300
	vector_unexpected 0x380
	.balign 0x80			/* 0x400: lower EL, AArch64, synchronous */
	b	el1_sync
	vector_unexpected 0x480
	vector_unexpected 0x500
	vector_unexpected 0x580
	vector_unexpected 0x600		/* lower EL, AArch32 */
	vector_unexpected 0x680
	vector_unexpected 0x700
	vector_unexpected 0x780

	.ltorg
	.balign 16
_image_end:
