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
 * Per-CPU EL2 set-up.  Out: x9 = sp = this CPU's mailbox (SP_EL2 points at the mailbox, so
 * the trap handler can save every register before it needs a scratch one).
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
	mov	sp, x9

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
	/* Start the CPUs reserved for the hypervisor (bit n = CPU n): they park in idle_exit. */
	ldr	x22, [x9, #MB_BOOT_RESERVED_MASK]
	mov	x23, #0
1:	cbz	x22, 2f
	tbz	x22, #0, 3f
	ldr	x0, =0xc4000003			/* PSCI CPU_ON (SMC64) */
	mov	x1, x23				/* MPIDR: Aff0 = CPU index (up to 16 CPUs) */
	adr	x2, reserved_entry
	mov	x3, x23
	smc	#0
3:	lsr	x22, x22, #1
	add	x23, x23, #1
	b	1b
2:	bl	primary_stage2
	ldr	x10, [x9, #MB_BOOT_ENTRY]
	msr	elr_el2, x10
	mov	x0, x21
	b	enter_guest

/* Other CPUs: QEMU's PSCI CPU_ON starts them here at EL2 (Python rewrote the entry point). */
	.global secondary_entry
secondary_entry:
	bl	el2_setup
	bl	primary_stage2
	ldr	x10, [x9, #MB_BOOT_ENTRY]
	msr	elr_el2, x10
	ldr	x0, [x9, #MB_BOOT_CONTEXT]
enter_guest:
	mov	x1, xzr
	mov	x2, xzr
	mov	x3, xzr
	eret

/* If Python gave the primary VM a stage-2 table (VMs can run), turn stage 2 on for it. */
primary_stage2:
	ldr	x10, [x9, #MB_BOOT_VTTBR]
	cbz	x10, 1f
	msr	vttbr_el2, x10
	ldr	x10, [x9, #MB_BOOT_VTCR]
	msr	vtcr_el2, x10
	mrs	x10, hcr_el2
	orr	x10, x10, #1			/* HCR_EL2.VM */
	msr	hcr_el2, x10
	isb
	tlbi	vmalls12e1
	dsb	nsh
	isb
1:	ret

/* A CPU reserved for the hypervisor: set up EL2, then wait for Python to give it a vCPU. */
reserved_entry:
	bl	el2_setup
	/* Its GIC CPU interface, so that Python's kick SPI can wake it from WFI while idle. */
	ldr	x10, [x9, #MB_BOOT_GICR_FRAME]
	cbz	x10, 1f
	str	wzr, [x10, #0x14]		/* GICR_WAKER: ProcessorSleep = 0 */
1:	mov	x10, #0xff
	msr	S3_0_C4_C6_0, x10		/* ICC_PMR_EL1 */
	mov	x10, #1
	msr	S3_0_C12_C12_7, x10		/* ICC_IGRPEN1_EL1 */
	isb
	b	idle_exit

/*
 * Synchronous exception from EL1 (HVC, trapped SMC, stage-2 fault, ...): save every register
 * in the exit record, ring, wait, obey the reply's commands, load every register from the
 * reply, eret.  sp is this CPU's mailbox.
 */
.macro save_gprs				/* all 31 GPRs into the exit record (sp = mailbox) */
	stp	x0, x1, [sp, #MB_X0]
	stp	x2, x3, [sp, #MB_X0 + 16]
	stp	x4, x5, [sp, #MB_X0 + 32]
	stp	x6, x7, [sp, #MB_X0 + 48]
	stp	x8, x9, [sp, #MB_X0 + 64]
	stp	x10, x11, [sp, #MB_X0 + 80]
	stp	x12, x13, [sp, #MB_X0 + 96]
	stp	x14, x15, [sp, #MB_X0 + 112]
	stp	x16, x17, [sp, #MB_X0 + 128]
	stp	x18, x19, [sp, #MB_X0 + 144]
	stp	x20, x21, [sp, #MB_X0 + 160]
	stp	x22, x23, [sp, #MB_X0 + 176]
	stp	x24, x25, [sp, #MB_X0 + 192]
	stp	x26, x27, [sp, #MB_X0 + 208]
	stp	x28, x29, [sp, #MB_X0 + 224]
	str	x30, [sp, #MB_X0 + 240]
	mov	x9, sp
.endm

el1_sync:
	save_gprs
	mov	x10, #MB_KIND_SYNC
	b	record

/*
 * A physical interrupt while a VM ran with HCR_EL2.IMO set (the hypervisor's kick, or the VM's
 * timer): acknowledge and end it here, and tell Python which one it was.
 */
el1_irq:
	save_gprs
	mrs	x10, S3_0_C12_C12_0		/* ICC_IAR1_EL1 */
	str	x10, [x9, #MB_IRQ_INTID]
	cmp	x10, #1020
	b.hs	1f
	msr	S3_0_C12_C12_1, x10		/* ICC_EOIR1_EL1: priority drop and deactivate */
	isb
1:	/* Save the vCPU's EL1 state too, in case Python switches it out (time slicing). */
	.irp reg, sctlr_el1, ttbr0_el1, ttbr1_el1, tcr_el1, mair_el1, amair_el1, vbar_el1, cpacr_el1, contextidr_el1, tpidr_el1, tpidr_el0, tpidrro_el0, sp_el0, sp_el1, elr_el1, spsr_el1, cntkctl_el1, cntv_cval_el0, cntv_ctl_el0
	mrs	x17, \reg
	str	x17, [x9, #CTX_\reg]
	.endr
	mrs	x17, S3_4_C12_C11_5		/* ICH_ELRSR_EL2: which list registers are free */
	str	x17, [x9, #CTX_ich_elrsr_el2]
	mov	x10, #MB_KIND_IRQ
	b	record

/* Wait for work: entered with x9 = mailbox (reserved CPUs, and after OP_IDLE). */
idle_exit:
	mov	x10, #MB_KIND_IDLE
record:
	mov	x12, x10			/* the kind, for the wait below */
	mov	x13, #0x40000			/* an idle CPU spins this long before it sleeps */
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
	mrs	x11, vbar_el1
	stp	x10, x11, [x9, #MB_MPIDR]

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
	b.eq	3f
	cmp	x12, #MB_KIND_IDLE
	b.ne	1b
	subs	x13, x13, #1
	b.hi	1b
	wfi					/* an idle CPU sleeps until Python kicks it */
	mrs	x13, S3_0_C12_C12_0		/* ICC_IAR1_EL1: take what woke us */
	cmp	x13, #1020
	b.hs	1b
	msr	S3_0_C12_C12_1, x13		/* ICC_EOIR1_EL1 */
	b	1b
3:	dmb	ish

	/* Obey the reply's commands in order.  x20 = 1: go idle instead of returning. */
	mov	x20, #0
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
	cmp	x14, #MB_OP_LOAD_EL1
	b.eq	cmd_load_el1
	cmp	x14, #MB_OP_TLBI_VM
	b.eq	cmd_tlbi_vm
	cmp	x14, #MB_OP_IDLE
	b.eq	cmd_idle
cmd_done:
	add	x13, x13, #MB_CMD_SIZE
	sub	x12, x12, #1
	b	next_cmd

cmd_smc:
	add	x17, x9, #MB_R_X0
	ldp	x0, x1, [x17]
	ldp	x2, x3, [x17, #16]
	ldp	x4, x5, [x17, #32]
	ldp	x6, x7, [x17, #48]
	smc	#0				/* SMCCC 1.1: x4..x17, x19..x29 survive */
	stp	x0, x1, [x17]
	stp	x2, x3, [x17, #16]
	b	cmd_done
cmd_write32:
	str	w16, [x15]
	dsb	sy
	b	cmd_done
cmd_write64:
	str	x16, [x15]
	dsb	sy
	b	cmd_done
cmd_idle:
	mov	x20, #1
	b	cmd_done
cmd_tlbi_vm:
	dsb	ishst
	tlbi	vmalls12e1is
	dsb	ish
	isb
	b	cmd_done
cmd_load_el1:				/* a VM's EL1 state and its stage-2 configuration */
	.irp reg, sctlr_el1, ttbr0_el1, ttbr1_el1, tcr_el1, mair_el1, amair_el1, vbar_el1, cpacr_el1, contextidr_el1, tpidr_el1, tpidr_el0, tpidrro_el0, sp_el0, sp_el1, elr_el1, spsr_el1, cntkctl_el1, cntv_cval_el0, cntv_ctl_el0, vmpidr_el2, hcr_el2, vttbr_el2, vtcr_el2
	ldr	x17, [x9, #CTX_\reg]
	msr	\reg, x17
	.endr
	isb
	b	cmd_done
cmd_msr:
	cmp	x15, #MSR_COUNT
	b.hs	cmd_done
	adr	x17, msr_gadgets
	add	x17, x17, x15, lsl #3
	br	x17
msr_gadgets:				/* two instructions each, in MSR_REGISTERS order */
	.irp reg, hcr_el2, vttbr_el2, vtcr_el2, cnthctl_el2, esr_el1, far_el1, elr_el1, spsr_el1, S3_0_C4_C6_0, S3_0_C12_C12_7, S3_4_C12_C11_0, S3_4_C12_C11_7, S3_4_C12_C12_0, S3_4_C12_C12_1, cntv_ctl_el0, S3_4_C12_C12_2, S3_4_C12_C12_3
	msr	\reg, x16
	b	msr_done
	.endr
msr_done:
	isb
	b	cmd_done

cmds_done:
	cbnz	x20, idle_exit
	ldr	x10, [x9, #MB_R_ELR]
	msr	elr_el2, x10
	ldr	x10, [x9, #MB_R_SPSR]
	msr	spsr_el2, x10
	add	x9, x9, #MB_R_X0
	ldp	x0, x1, [x9]
	ldp	x2, x3, [x9, #16]
	ldp	x4, x5, [x9, #32]
	ldp	x6, x7, [x9, #48]
	ldp	x10, x11, [x9, #80]
	ldp	x12, x13, [x9, #96]
	ldp	x14, x15, [x9, #112]
	ldp	x16, x17, [x9, #128]
	ldp	x18, x19, [x9, #144]
	ldp	x20, x21, [x9, #160]
	ldp	x22, x23, [x9, #176]
	ldp	x24, x25, [x9, #192]
	ldp	x26, x27, [x9, #208]
	ldp	x28, x29, [x9, #224]
	ldr	x30, [x9, #240]
	ldp	x8, x9, [x9, #64]		/* x9 last: it was the base */
	eret

/*
 * Any other exception is fatal: tell Python which vector fired (in x0 of the record) and park.
 * The guest's x0/x9/x10 are lost, which no longer matters.
 */
unexpected:
	mov	x9, sp
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
	.balign 0x80			/* 0x480: lower EL, AArch64, IRQ */
	b	el1_irq
	vector_unexpected 0x500
	vector_unexpected 0x580
	vector_unexpected 0x600		/* lower EL, AArch32 */
	vector_unexpected 0x680
	vector_unexpected 0x700
	vector_unexpected 0x780

	.ltorg
	.balign 16
_image_end:
