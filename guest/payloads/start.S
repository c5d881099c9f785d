/*
 * Entry of the bare-metal test payloads.  The EL2 shim starts them at EL1 (MMU off) in place of
 * Linux: x0 = DTB.  Secondary CPUs arrive at payload_secondary with x0 = the CPU_ON context.
 */
	.section .text.entry, "ax"
	.global _start
_start:
	adr	x1, el1_vectors
	msr	vbar_el1, x1
	isb
	ldr	x1, =__stack_top
	mov	sp, x1
	ldr	x1, =__bss_start		/* zero .bss (8-byte aligned by the linker script) */
	ldr	x2, =__bss_end
1:	cmp	x1, x2
	b.hs	2f
	str	xzr, [x1], #8
	b	1b
2:	bl	payload_main
	b	system_off

	.global payload_secondary
payload_secondary:
	adr	x1, el1_vectors
	msr	vbar_el1, x1
	isb
	ldr	x1, =__secondary_stack_top
	mov	sp, x1
	bl	secondary_main
	ldr	x0, =0x84000002			/* PSCI CPU_OFF */
	smc	#0
3:	wfe
	b	3b

	.global system_off
system_off:
	ldr	x0, =0x84000008			/* PSCI SYSTEM_OFF */
	smc	#0
4:	wfe
	b	4b

/*
 * preserved_regs_after_hvc(fid): load a pattern into x8..x17, make the call, and return how
 * many of x8..x17 changed.  SMCCC 1.1 says an HVC preserves x4..x17 (x4..x7 are args here).
 */
	.global preserved_regs_after_hvc
preserved_regs_after_hvc:
	mov	x18, x0
	mov	x8, #0x0808
	mov	x9, #0x0909
	mov	x10, #0x1010
	mov	x11, #0x1111
	mov	x12, #0x1212
	mov	x13, #0x1313
	mov	x14, #0x1414
	mov	x15, #0x1515
	mov	x16, #0x1616
	mov	x17, #0x1717
	mov	x0, x18
	hvc	#0
	mov	x0, #0
	mov	x1, #0x0808
	cmp	x8, x1
	cinc	x0, x0, ne
	mov	x1, #0x0909
	cmp	x9, x1
	cinc	x0, x0, ne
	mov	x1, #0x1010
	cmp	x10, x1
	cinc	x0, x0, ne
	mov	x1, #0x1111
	cmp	x11, x1
	cinc	x0, x0, ne
	mov	x1, #0x1212
	cmp	x12, x1
	cinc	x0, x0, ne
	mov	x1, #0x1313
	cmp	x13, x1
	cinc	x0, x0, ne
	mov	x1, #0x1414
	cmp	x14, x1
	cinc	x0, x0, ne
	mov	x1, #0x1515
	cmp	x15, x1
	cinc	x0, x0, ne
	mov	x1, #0x1616
	cmp	x16, x1
	cinc	x0, x0, ne
	mov	x1, #0x1717
	cmp	x17, x1
	cinc	x0, x0, ne
	ret

/* Any exception at EL1 is a test failure: report it and power off. */
	.balign 0x800
el1_vectors:
	.rept 16
	.balign 0x80
	b	el1_fault
	.endr
el1_fault:				/* payload_fault() returns non-zero to resume */
	sub	sp, sp, #176
	stp	x0, x1, [sp, #0]
	stp	x2, x3, [sp, #16]
	stp	x4, x5, [sp, #32]
	stp	x6, x7, [sp, #48]
	stp	x8, x9, [sp, #64]
	stp	x10, x11, [sp, #80]
	stp	x12, x13, [sp, #96]
	stp	x14, x15, [sp, #112]
	stp	x16, x17, [sp, #128]
	stp	x18, x29, [sp, #144]
	str	x30, [sp, #160]
	mrs	x0, esr_el1
	mrs	x1, elr_el1
	mrs	x2, far_el1
	bl	payload_fault
	cbz	x0, system_off
	ldp	x0, x1, [sp, #0]
	ldp	x2, x3, [sp, #16]
	ldp	x4, x5, [sp, #32]
	ldp	x6, x7, [sp, #48]
	ldp	x8, x9, [sp, #64]
	ldp	x10, x11, [sp, #80]
	ldp	x12, x13, [sp, #96]
	ldp	x14, x15, [sp, #112]
	ldp	x16, x17, [sp, #128]
	ldp	x18, x29, [sp, #144]
	ldr	x30, [sp, #160]
	add	sp, sp, #176
	eret
	.ltorg
