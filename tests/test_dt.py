"""The generated device tree and its validation with dtschema (gunyah-sim dt ...)."""
import shutil
import subprocess

import fdt
import pytest

from conftest import gunyah_sim
from dts import validate as dtvalidate
from dts.generate import BINDINGS
from gunyah_el2 import capabilities

pytestmark = pytest.mark.qemu       # runs QEMU (-machine dumpdtb) to get the machine's DT


@pytest.mark.parametrize("abi", ["v6", "v17"])
def test_generated_dt_has_the_hypervisor_node_from_the_capability_table(abi, tmp_path):
    dtb = tmp_path / "g.dtb"
    p = gunyah_sim("dt", "show", "--abi", abi, "--dtb-out", str(dtb))
    assert p.returncode == 0, p.stderr
    tree = fdt.parse_dtb(dtb.read_bytes())
    hyp_compat, rm_compat = BINDINGS[abi]
    assert list(tree.get_property("compatible", "/hypervisor")) == hyp_compat
    rm = f"/hypervisor/gunyah-resource-mgr@{capabilities.RM_TX.capid:x}"
    assert list(tree.get_property("compatible", rm)) == rm_compat
    assert list(tree.get_property("reg", rm)) == [0, capabilities.RM_TX.capid,
                                                  0, capabilities.RM_RX.capid]
    assert list(tree.get_property("interrupts", rm)) == [0, capabilities.RM_TX.spi, 1,
                                                         0, capabilities.RM_RX.spi, 1]
    assert tree.exist_property("no-map", "/reserved-memory/gunyah-sim-el2@40000000")
    assert "gunyah-resource-mgr@10" in p.stdout          # the DTS went to stdout


@pytest.mark.parametrize("abi", ["v6", "v17"])
def test_generated_dt_validates_against_its_binding(abi):
    p = gunyah_sim("dt", "validate", "--abi", abi)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "OK (2 Gunyah node(s)" in p.stdout


def test_other_generations_binding_rejects_it(tmp_path):
    dtb = tmp_path / "v17.dtb"
    assert gunyah_sim("dt", "show", "--abi", "v17", "--dtb-out", str(dtb)).returncode == 0
    p = gunyah_sim("dt", "validate", "--abi", "v6", "--dtb", str(dtb))
    assert p.returncode == 1
    assert "gunyah-hypervisor-1.0" in p.stderr and "FAILED" in p.stderr


def _broken(tmp_path, sed_expr):
    dtb = tmp_path / "ok.dtb"
    assert gunyah_sim("dt", "show", "--dtb-out", str(dtb)).returncode == 0
    dts = subprocess.run(["dtc", "-q", "-I", "dtb", "-O", "dts", str(dtb)], check=True,
                         capture_output=True, text=True).stdout
    broken = tmp_path / "broken.dtb"
    subprocess.run(["dtc", "-q", "-I", "dts", "-O", "dtb", "-o", str(broken)],
                   input=sed_expr(dts), check=True, text=True)
    return broken


def test_a_broken_dt_fails_with_dtschemas_message(tmp_path):
    broken = _broken(tmp_path, lambda dts: dts.replace(
        '"gunyah-resource-manager";', '"gunyah-resource-manager", "bogus";'))
    p = gunyah_sim("dt", "validate", "--dtb", str(broken))
    assert p.returncode == 1
    assert "is too long" in p.stderr and "gunyah-resource-mgr" in p.stderr


def test_missing_interrupts_is_reported(tmp_path):
    def drop_interrupts(dts):
        head, rm = dts.split("gunyah-resource-mgr@10 {", 1)
        body, tail = rm.split("};", 1)
        body = "\n".join(l for l in body.splitlines() if "interrupts" not in l)
        return head + "gunyah-resource-mgr@10 {" + body + "};" + tail
    p = gunyah_sim("dt", "validate", "--dtb", str(_broken(tmp_path, drop_interrupts)))
    assert p.returncode == 1 and "interrupts" in p.stderr


def test_a_kernel_trees_binding_is_used_with_bindings(tmp_path):
    """--bindings takes a kernel tree's bindings dir and uses only its Gunyah files."""
    tree = tmp_path / "Documentation" / "devicetree" / "bindings"
    (tree / "firmware").mkdir(parents=True)
    shutil.copy(dtvalidate.BINDINGS_DIR / "v6" / "firmware" / "gunyah-hypervisor.yaml",
                tree / "firmware")
    (tree / "unrelated.yaml").write_text("not: a gunyah binding\n")
    ok = gunyah_sim("dt", "validate", "--abi", "v6", "--bindings", str(tree))
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "1 Gunyah binding file(s)" in ok.stdout
    bad = gunyah_sim("dt", "validate", "--abi", "v17", "--bindings", str(tree))
    assert bad.returncode == 1
