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

#endif
