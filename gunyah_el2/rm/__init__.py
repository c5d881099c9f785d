"""The Gunyah Resource Manager (RM), as policy: RPC codec, message payloads, state, server.

Knows nothing of QEMU.  `server.ResourceManager` is what the primary VM's RM message queues
are wired to (gunyah_el2/capabilities.py); docs/rm.md has the facts and the message table.
"""
