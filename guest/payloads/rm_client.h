/* A small Resource Manager RPC client for the bare-metal payloads (docs/rm.md layouts). */
#ifndef GSIM_RM_CLIENT_H
#define GSIM_RM_CLIENT_H

#include "lib.h"

#define RM_VM_ALLOC_VMID 0x56000001u
#define RM_VM_DEALLOC_VMID 0x56000002u
#define RM_VM_START 0x56000004u
#define RM_VM_STOP 0x56000005u
#define RM_VM_CONFIG_IMAGE 0x56000009u
#define RM_VM_INIT 0x5600000bu
#define RM_VM_GET_VMID 0x56000024u
#define RM_MEM_LEND 0x51000012u
#define RM_MEM_RECLAIM 0x51000015u
#define RM_NOTIF_VM_EXITED 0x56100001u
#define RM_NOTIF_VM_STATUS 0x56100008u

#define RM_TRANSPORT_ERROR 0xfffffffeu

/* Initialise the GIC interrupt the RM's replies arrive on. */
void rm_init(void);
/* One request, one reply: returns the RM error code (0 = OK) and copies the reply payload. */
u32 rm_call(u32 msg_id, const void *req, u32 len, void *reply, u32 *reply_len);
/* Wait for a notification with this ID whose first u16 is `vmid`; returns 1 if it came. */
int rm_wait_notification(u32 msg_id, u32 vmid, u64 spins);
/* RX interrupts seen so far. */
u64 rm_rx_interrupts(void);

/* Little-endian fields of RM payloads. */
void put_u16(unsigned char *p, u16 v);
void put_u32(unsigned char *p, u32 v);
void put_u64(unsigned char *p, u64 v);
u16 get_u16(const unsigned char *p);
u32 get_u32(const unsigned char *p);

/* A request whose payload is {u16 vmid, zeros} (VM_START, VM_INIT, VM_STOP, ...). */
u32 rm_vmid_call(u32 msg_id, u16 vmid);
u32 rm_mem_reclaim(u32 handle);

/* What a VMM knows of one VM it creates. */
struct rm_vm {
	u64 pa, size;             /* the memory it lends, holding the image and the DTB */
	u16 vmid;
	u32 handle;
};

/*
 * The v6 VMM's steps before VM_START: VM_ALLOC_VMID, MEM_LEND of the VM's memory (RWX to the
 * VM), VM_CONFIG_IMAGE (image at offset 0 of that parcel), VM_INIT.  One TAP case per step;
 * returns 1 when all succeeded.
 */
int rm_vm_prepare(struct rm_vm *vm, u32 label, u64 image_size, u64 dtb_offset, u64 dtb_size);

#endif
