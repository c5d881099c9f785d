"""Generated documentation must match the code it is generated from."""
import importlib.util
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_abi_doc_hypercall_table_is_current():
    spec = importlib.util.spec_from_file_location("gen_docs", REPO / "scripts" / "gen_docs.py")
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    text = gen.ABI_DOC.read_text()
    assert gen.render(text) == text, "docs/abi.md is stale: run scripts/gen-docs"
    assert "| msgq_send |" in text and "0xc600801b" in text
