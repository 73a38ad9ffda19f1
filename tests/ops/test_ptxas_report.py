"""scripts/check_cuda_build.sh's ptxas -v parser: registers per kernel, spills and stack frames fail."""
from models.dino.ops import ptxas_report

CLEAN = """\
ptxas info    : 0 bytes gmem
ptxas info    : Compiling entry function '_ZN4msda14forward_kernelIffEEvPKT_PKlS5_PKT0_S8_PS1_NS_5SizesENS_7StridesEi' for 'sm_80'
ptxas info    : Function properties for _ZN4msda14forward_kernelIffEEvPKT_PKlS5_PKT0_S8_PS1_NS_5SizesENS_7StridesEi
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 64 registers, used 0 barriers, 536 bytes cmem[0]
ptxas info    : Compiling entry function '_Z5otherv' for 'sm_80'
ptxas info    : Function properties for _Z5otherv
    64 bytes stack frame, 8 bytes spill stores, 8 bytes spill loads
ptxas info    : Used 255 registers
"""
SPILL = CLEAN.replace("""forward_kernelIffEEvPKT_PKlS5_PKT0_S8_PS1_NS_5SizesENS_7StridesEi
    0 bytes stack frame, 0 bytes spill stores""", """forward_kernelIffEEvPKT_PKlS5_PKT0_S8_PS1_NS_5SizesENS_7StridesEi
    0 bytes stack frame, 4 bytes spill stores""")
STACK = CLEAN.replace("    0 bytes stack frame, 0 bytes spill stores", "    16 bytes stack frame, 0 bytes spill stores")


def test_parse_reads_registers_stack_and_spills():
    kernels = ptxas_report.parse(CLEAN.splitlines())
    assert [(k["arch"], k["regs"], k["stack"], k["spill_stores"]) for k in kernels] == [
        ("sm_80", 64, 0, 0), ("sm_80", 255, 64, 8)]


def test_only_msda_kernels_are_judged(tmp_path, capsys):
    log = tmp_path / "log"
    log.write_text(CLEAN)  # the spilling non-msda kernel does not count
    assert ptxas_report.main(str(log)) == 0
    assert "sm_80 forward_kernel<float, float>: 64 registers, 0 B stack frame" in capsys.readouterr().out


def test_spills_stack_frames_or_no_kernels_fail(tmp_path, capsys):
    log = tmp_path / "log"
    for text in (SPILL, STACK):
        log.write_text(text)
        assert ptxas_report.main(str(log)) == 1
        assert "<-- FAIL" in capsys.readouterr().out
    log.write_text("nvcc: no ptxas output\n")
    assert ptxas_report.main(str(log)) == 1
    assert "no msda kernel" in capsys.readouterr().err
