"""The guest's device tree: QEMU's own DTB plus what the Gunyah hypervisor adds.

Starts from the DTB QEMU generates for the machine (``-machine dumpdtb=``), so every device
QEMU emulates is described exactly, and adds:
- a no-map reserved-memory region over the EL2 shim and its mailboxes;
- /chosen/bootargs;
- the /hypervisor node and its Resource Manager child, per the binding of the selected driver
  generation, built from the hypervisor's own capability table (one source of truth).

Uses the ``fdt`` library, which parses QEMU's DTB (FDT_NOP records included).
"""
from __future__ import annotations

from dataclasses import dataclass

import fdt

GIC_SPI = 0
IRQ_TYPE_EDGE_RISING = 1
IRQ_TYPE_LEVEL_HIGH = 4


@dataclass(frozen=True)
class RmNodeSpec:
    """What the hypervisor tells the primary VM about its Resource Manager message queues."""
    tx_capid: int        # message queue the primary sends on (Linux -> RM)
    rx_capid: int        # message queue the primary receives on (RM -> Linux)
    tx_spi: int          # SPI number (not INTID) of the TX "space available" interrupt
    rx_spi: int          # SPI number of the RX "message available" interrupt
    trigger: int = IRQ_TYPE_EDGE_RISING


# Per driver generation: (hypervisor node compatibles, RM node compatibles).
# v6's Linux binds nothing to the hypervisor node, so the RM child only becomes a platform
# device when the parent is also a "simple-bus" (the real RM's DT overlay adds it too).
BINDINGS = {
    "v6": (["gunyah-hypervisor-1.0", "gunyah-hypervisor", "simple-bus"],
           ["gunyah-resource-manager-1-0", "gunyah-resource-manager"]),
    "v17": (["gunyah-hypervisor"], ["gunyah-resource-manager"]),
}


def _words64(value: int) -> list[int]:
    return [(value >> 32) & 0xFFFF_FFFF, value & 0xFFFF_FFFF]


def add_reserved_memory(tree: fdt.FDT, name: str, base: int, size: int) -> None:
    path = "/reserved-memory"
    if not tree.exist_node(path):
        node = fdt.Node("reserved-memory")
        node.append(fdt.PropWords("#address-cells", 2))
        node.append(fdt.PropWords("#size-cells", 2))
        node.append(fdt.Property("ranges"))
        tree.add_item(node, "/")
    region = fdt.Node(f"{name}@{base:x}")
    region.append(fdt.PropWords("reg", *_words64(base), *_words64(size)))
    region.append(fdt.Property("no-map"))
    tree.add_item(region, path)


def add_hypervisor_node(tree: fdt.FDT, abi: str, rm: RmNodeSpec) -> None:
    """/hypervisor with its gunyah-resource-mgr child, per `abi`'s binding."""
    hyp_compat, rm_compat = BINDINGS[abi]
    if tree.exist_node("/hypervisor"):
        tree.remove_node("hypervisor", "/")
    hyp = fdt.Node("hypervisor")
    hyp.append(fdt.PropStrings("compatible", *hyp_compat))
    hyp.append(fdt.PropWords("#address-cells", 2))
    hyp.append(fdt.PropWords("#size-cells", 0))
    mgr = fdt.Node(f"gunyah-resource-mgr@{rm.tx_capid:x}")
    mgr.append(fdt.PropStrings("compatible", *rm_compat))
    mgr.append(fdt.PropWords("reg", *_words64(rm.tx_capid), *_words64(rm.rx_capid)))
    mgr.append(fdt.PropWords("interrupts", GIC_SPI, rm.tx_spi, rm.trigger,
                             GIC_SPI, rm.rx_spi, rm.trigger))
    hyp.append(mgr)
    tree.add_item(hyp, "/")


def _find_compatible(tree: fdt.FDT, compatible: str) -> str:
    for path, _nodes, props in tree.walk():
        for prop in props:
            if prop.name == "compatible" and compatible in list(prop):
                return path
    raise ValueError(f"the DT has no {compatible} node")


def _reg_address(tree: fdt.FDT, path: str, index: int = 0) -> int:
    """Address of the index-th reg entry (2 address cells, 2 size cells, as on virt)."""
    reg = tree.get_property("reg", path)
    return (reg[4 * index] << 32) | reg[4 * index + 1]


def gic_distributor(tree: fdt.FDT) -> int:
    """Physical address of the GICv3 distributor (first reg of the arm,gic-v3 node)."""
    return _reg_address(tree, _find_compatible(tree, "arm,gic-v3"))


def platform_addresses(tree: fdt.FDT) -> dict[str, int]:
    """The devices bare-metal payloads drive: GIC distributor, redistributors, PL011."""
    gic = _find_compatible(tree, "arm,gic-v3")
    return {"gicd": _reg_address(tree, gic, 0), "gicr": _reg_address(tree, gic, 1),
            "uart": _reg_address(tree, _find_compatible(tree, "arm,pl011"))}


def hide_cpus(tree: fdt.FDT, keep: int) -> None:
    """Remove CPUs from `keep` on: they belong to the hypervisor, not to this VM."""
    cpus = tree.get_node("/cpus")
    for node in list(cpus.nodes):
        if node.name == "cpu-map":
            cpus.remove_subnode("cpu-map")          # topology of CPUs that are not all ours
        elif node.name.startswith("cpu@") and int(node.name[4:], 16) >= keep:
            cpus.remove_subnode(node.name)


def build_guest_dt(base_dtb: bytes, *, reserved: list[tuple[str, int, int]],
                   bootargs: str | None = None, abi: str | None = None,
                   rm: RmNodeSpec | None = None, primary_cpus: int | None = None) -> bytes:
    tree = fdt.parse_dtb(base_dtb)
    if primary_cpus is not None:
        hide_cpus(tree, primary_cpus)
    for name, base, size in reserved:
        add_reserved_memory(tree, name, base, size)
    if bootargs is not None:
        tree.set_property("bootargs", bootargs, "/chosen")
    if rm is not None:
        add_hypervisor_node(tree, abi or "v17", rm)
    return tree.to_dtb(version=17)


def dtb_to_dts(dtb: bytes) -> str:
    return fdt.parse_dtb(dtb).to_dts()


def _vm_tree(ncpus: int, ipa_base: int, compatible: str, cpu_compatible: str,
             enable_method: str | None = None) -> fdt.FDT:
    """What every secondary VM's DT has: its CPUs and, in gunyah-vm-config, where its memory
    starts (the RM reads the base from there, as the v6 sample VM's DT gives it)."""
    tree = fdt.FDT()
    tree.set_property("#address-cells", 2, "/")
    tree.set_property("#size-cells", 2, "/")
    tree.set_property("compatible", compatible, "/")
    cpus = fdt.Node("cpus")
    cpus.append(fdt.PropWords("#address-cells", 1))
    cpus.append(fdt.PropWords("#size-cells", 0))
    for i in range(ncpus):
        cpu = fdt.Node(f"cpu@{i}")
        cpu.append(fdt.PropStrings("device_type", "cpu"))
        cpu.append(fdt.PropStrings("compatible", cpu_compatible))
        cpu.append(fdt.PropWords("reg", i))
        if enable_method:
            cpu.append(fdt.PropStrings("enable-method", enable_method))
        cpus.append(cpu)
    tree.add_item(cpus, "/")
    config = fdt.Node("gunyah-vm-config")
    config.append(fdt.PropStrings("image-name", "gunyah-sim-test-vm"))
    config.append(fdt.PropStrings("os-type", "linux"))
    memory = fdt.Node("memory")
    memory.append(fdt.PropWords("base-address", *_words64(ipa_base)))
    config.append(memory)
    tree.add_item(config, "/")
    return tree


def vm_dtb(ncpus: int, ipa_base: int) -> bytes:
    """A minimal DT for a bare-metal secondary VM: its CPUs and where its memory starts."""
    return _vm_tree(ncpus, ipa_base, "gunyah-sim,test-vm", "arm,armv8").to_dtb(version=17)


def linux_vm_dtb(mem_base: int, mem_size: int, initrd: tuple[int, int], bootargs: str,
                 ncpus: int = 1) -> bytes:
    """A DT for Linux as a secondary VM: its vCPUs, its memory, PSCI by HVC, the virtual
    GICv3 and timer the hypervisor provides, an initramfs; its console is earlycon on the
    PL011 the hypervisor emulates."""
    tree = _vm_tree(ncpus, mem_base, "linux,dummy-virt", "arm,cortex-a57", "psci")
    tree.set_property("interrupt-parent", 1, "/")
    chosen = fdt.Node("chosen")
    chosen.append(fdt.PropStrings("bootargs", bootargs))
    chosen.append(fdt.PropWords("linux,initrd-start", *_words64(initrd[0])))
    chosen.append(fdt.PropWords("linux,initrd-end", *_words64(initrd[1])))
    tree.add_item(chosen, "/")
    memory = fdt.Node(f"memory@{mem_base:x}")
    memory.append(fdt.PropStrings("device_type", "memory"))
    memory.append(fdt.PropWords("reg", *_words64(mem_base), *_words64(mem_size)))
    tree.add_item(memory, "/")
    psci = fdt.Node("psci")
    psci.append(fdt.PropStrings("compatible", "arm,psci-1.0", "arm,psci-0.2"))
    psci.append(fdt.PropStrings("method", "hvc"))
    tree.add_item(psci, "/")
    gic = fdt.Node("intc@8000000")
    gic.append(fdt.PropStrings("compatible", "arm,gic-v3"))
    gic.append(fdt.PropWords("#interrupt-cells", 3))
    gic.append(fdt.Property("interrupt-controller"))
    gic.append(fdt.PropWords("reg", 0, 0x0800_0000, 0, 0x1_0000,
                             0, 0x080A_0000, 0, 0x2_0000 * ncpus))
    gic.append(fdt.PropWords("phandle", 1))
    tree.add_item(gic, "/")
    timer = fdt.Node("timer")
    timer.append(fdt.PropStrings("compatible", "arm,armv8-timer"))
    timer.append(fdt.PropWords("interrupts", 1, 13, 0x104, 1, 14, 0x104, 1, 11, 0x104,
                               1, 10, 0x104))
    timer.append(fdt.Property("always-on"))
    tree.add_item(timer, "/")
    return tree.to_dtb(version=17)
