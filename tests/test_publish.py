"""benchmarks.publish: each part's table replaces its own section; notes between the sections stay."""
from benchmarks import publish


def test_a_table_replaces_its_section_and_the_notes_between_sections_stay(tmp_path):
    doc = tmp_path / "benchmarks.md"
    doc.write_text("# Benchmarks\n\n<!-- bench:accuracy -->\nold accuracy\n<!-- /bench:accuracy -->\n\n"
                   "A note written by hand.\n\n<!-- bench:runtime -->\nold runtime\n<!-- /bench:runtime -->\n")
    results = tmp_path / "results"
    results.mkdir()
    (results / "runtime.txt").write_text("new runtime table\n")
    (results / "audit.txt").write_text("audit table\n")
    assert publish.publish(results, doc) == ["runtime", "audit"]
    text = doc.read_text()
    assert "old accuracy" in text and "A note written by hand." in text  # not re-run: kept, as the note
    assert "old runtime" not in text and text.count("new runtime table") == 1
    assert text.index("A note written by hand.") < text.index("new runtime table") < text.index("audit table")
    assert text.count("<!-- bench:runtime -->") == 1 and text.rstrip().endswith("<!-- /bench:audit -->")


def test_the_machine_line_names_its_widest_vector_arithmetic(tmp_path):
    assert publish.vector_units(["sse2", "avx2", "avx512f", "avx512_bf16"]) == "AVX-512 with bfloat16"
    assert publish.vector_units(["sse2", "avx2", "avx512f"]) == "AVX-512"
    assert publish.vector_units(["sse2", "avx2"]) == "AVX2" and publish.vector_units(["neon"]) == ""
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu sse2 avx2 fma\n")
    assert publish._cpu(str(info)).startswith("AMD EPYC, ") and publish._cpu(str(info)).endswith(" cores, AVX2")
