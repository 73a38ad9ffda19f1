"""sass_report.py: the point loop found in SASS text, kernel variants read from their names, the checks
against the ceilings. The compile itself runs in scripts/check_cuda_build.sh (nvcc, about a minute)."""
import json

import pytest

from models.dino.ops import sass_report

FWD = "_ZN4msda14forward_kernelIffiLi4EEEvPKT_PKlS5_PKT0_S8_PS1_NS_8GeometryIT1_EE"
BWD = "_ZN4msda15backward_kernelIN3c108BFloat16EflLi8ELi0EEEvPKT_PKlS7_PKT0_SA_S5_PS8_SB_SB_NS_8GeometryIT1_EE"
OLD = "_ZN4msda14forward_kernelIffEEvPKT_PKlS5_PKT0_S8_PS1_NS_5SizesENS_7StridesEi"
# today's kernels: <scalar_t, acc_t, index_t, V, kVec[, kArch]>
FWD_SCALAR = "_ZN4msda14forward_kernelIffiLi4ELb0EEEvPKT_PKlS5_PKT0_S8_PS1_NS_8GeometryIT1_EE"
FWD_SCALAR8 = "_ZN4msda14forward_kernelIN3c104HalfEflLi8ELb0EEEvPKT_PKlS7_PKT0_SA_PS3_NS_8GeometryIT1_EE"
BWD_VECTOR = ("_ZN4msda15backward_kernelIN3c108BFloat16EflLi8ELb1ELi0EEEvPKT_PKlS7_PKT0_SA_S5_PS8_SB_SB_"
              "NS_8GeometryIT1_EE")

# cuobjdump -sass layout: an outer loop 0x10..0x90 holding the point loop 0x20..0x80 (it floors a
# coordinate), which holds a channel loop 0x40..0x50 without a floor (counted once, inside the point loop)
SASS = f"""
Fatbin elf code:
================
arch = sm_90

\tcode for sm_90
\t\tFunction : {FWD}
\t.headerflags\t@"EF_CUDA_SM90 EF_CUDA_VIRTUAL_SM(EF_CUDA_SM90)"
        /*0000*/                   IMAD.MOV.U32 R1, RZ, RZ, c[0x0][0x28] ;   /* 0x00000a00ff017624 */
                                                                              /* 0x000fc400078e00ff */
        /*0010*/                   LDG.E R2, desc[UR4][R4.64] ;               /* 0x0 */
        /*0020*/                   FFMA.FTZ R3, R2, R5, -0.5 ;                /* 0x0 */
        /*0030*/                   F2I.FTZ.FLOOR.NTZ R6, R3 ;                 /* 0x0 */
        /*0040*/                   LDG.E.128 R8, desc[UR4][R6.64] ;           /* 0x0 */
        /*0050*/               @P1 BRA 0x40 ;                                 /* 0x0 */
        /*0060*/                   FFMA.FTZ R12, R8, R3, R12 ;                /* 0x0 */
        /*0070*/                   ISETP.GE.AND P0, PT, R0, UR5, PT ;         /* 0x0 */
        /*0080*/              @!P0 BRA 0x20 ;                                 /* 0x0 */
        /*0090*/              @!P2 BRA 0x10 ;                                 /* 0x0 */
        /*00a0*/                   EXIT ;                                     /* 0x0 */
        /*00b0*/                   BRA 0xb0;                                  /* 0x0 */
\t\tFunction : {OLD}
        /*0000*/                   FRND.FTZ.FLOOR R46, R45 ;                  /* 0x0 */
        /*0010*/                   EXIT ;                                     /* 0x0 */
"""
PTXAS = f"""\
ptxas info    : Compiling entry function '{FWD}' for 'sm_90'
ptxas info    : Function properties for {FWD}
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 40 registers, used 0 barriers
"""


def test_point_loop_is_the_innermost_loop_with_a_floor():
    functions = sass_report.parse_sass(SASS)
    assert [(f["arch"], f["name"], len(f["instrs"])) for f in functions] == [("sm_90", FWD, 12), ("sm_90", OLD, 2)]
    assert sass_report.loops(functions[0]["instrs"]) == [(0x10, 0x90), (0x20, 0x80), (0x40, 0x50)]
    assert sass_report.point_loop(functions[0]["instrs"]) == (0x20, 0x80, 7)
    assert sass_report.point_loop(functions[1]["instrs"]) is None  # a floor outside any loop


def test_kernel_variants_from_their_names():
    names = sass_report.demangle_all([FWD, BWD, OLD, FWD_SCALAR, FWD_SCALAR8, BWD_VECTOR])
    if names[FWD] == FWD:
        pytest.skip("c++filt is not available")
    described = {k: sass_report.describe(names[k]) for k in names}
    assert described[FWD_SCALAR] == {"kernel": "forward", "dtype": "fp32", "index": "int32", "V": 4,
                                     "path": "scalar"}
    assert described[FWD_SCALAR8] == {"kernel": "forward", "dtype": "fp16", "index": "int64", "V": 8,
                                      "path": "scalar"}
    assert described[BWD_VECTOR] == {"kernel": "backward", "dtype": "bf16", "index": "int64", "V": 8,
                                     "path": "vector"}
    assert [sass_report.path_key(described[k]) for k in (FWD_SCALAR, FWD_SCALAR8, BWD_VECTOR)] == [
        "scalar4", "scalar8", "vector"]
    # issue 24's first version: <scalar_t, acc_t, index_t, V[, kArch]>, vector exactly when V > 1
    assert described[FWD] == {"kernel": "forward", "dtype": "fp32", "index": "int32", "V": 4, "path": "vector"}
    assert described[BWD] == {"kernel": "backward", "dtype": "bf16", "index": "int64", "V": 8, "path": "vector"}
    # the kernels before issue 24: <scalar_t, acc_t>, int64 indices, one channel per lane
    assert described[OLD] == {"kernel": "forward", "dtype": "fp32", "index": "int64", "V": 1, "path": "scalar"}
    assert sass_report.path_key(described[OLD]) == "scalar1"


def test_rows_join_ptxas_figures_and_divide_by_channels():
    rows = sass_report.report_rows(SASS, PTXAS)
    fwd = rows[0]
    assert (fwd["regs"], fwd["stack"], fwd["spills"], fwd["loop"], fwd["per_point_channel"]) == (40, 0, 0, 7, 1.75)
    assert rows[1]["regs"] is None and rows[1]["loop"] is None
    assert "| forward | fp32 | vector (4) | int32 | sm_90 | 40 | 0 | 0 | 7 | 1.75 |" in sass_report.format_table(rows)


def row(**kw):
    base = {"arch": "sm_90", "kernel": "forward", "dtype": "fp32", "path": "vector", "index": "int32", "V": 4,
            "regs": 40, "stack": 0, "spills": 0, "loop": 80, "per_point_channel": 20.0}
    return {**base, **kw}


def test_check_fails_on_spills_stack_counts_and_missing_kernels():
    ceilings = {"forward": {"fp32": {"vector": 30}}}
    assert sass_report.check([row()], ceilings) == []
    assert sass_report.check([row(per_point_channel=30.0)], ceilings) == []
    failures = [sass_report.check([bad], ceilings) for bad in (
        row(per_point_channel=30.5), row(spills=8), row(stack=16), row(regs=None), row(per_point_channel=None),
        row(dtype="bf16"))]
    assert all(len(f) >= 1 for f in failures)
    assert "> ceiling 30" in failures[0][0] and "8 B spilled" in failures[1][0] and "16 B stack" in failures[2][0]
    assert "no ptxas" in failures[3][0] and "no point loop" in failures[4][0]
    assert any("no ceiling recorded" in f for f in failures[5]) and any("not found" in f for f in failures[5])


SCALAR_WIDTHS = {("forward", "fp16"): (8, 4, 2, 1), ("forward", "bf16"): (8, 4, 2, 1), ("forward", "fp32"): (4, 2, 1),
                 ("forward", "fp64"): (4, 2, 1)}


def test_recorded_ceilings_cover_every_kernel_and_meet_the_issue_targets():
    """One ceiling per kernel, dtype and path (the scalar chunk widths of ForwardWidths / BackwardWidths
    in msda_cuda_kernels.cuh); issue 24's targets where they can hold: forward <= 30 per (point, channel)
    for fp32 and no more for fp16 / bf16, on the vector path and the scalar chunks of 4 and 8 (every
    D >= 4); backward <= 185 (half of the 371 measured before it) on every path. The forward's chunks
    of 1 and 2 (D = 1, 2, 3) cannot share a point's work over enough channels to reach 30."""
    ceilings = sass_report.load_ceilings()
    assert set(ceilings) == {"forward", "backward"}
    for kernel, dtypes in ceilings.items():
        assert set(dtypes) == {"fp32", "fp64", "fp16", "bf16"}
        for dtype, paths in dtypes.items():
            widths = SCALAR_WIDTHS.get((kernel, dtype), (4, 1))
            assert set(paths) == {"vector"} | {f"scalar{w}" for w in widths}, (kernel, dtype)
    for dtype in ("fp32", "fp16", "bf16"):
        fwd = ceilings["forward"][dtype]
        assert all(limit <= 30 for path, limit in fwd.items() if path in ("vector", "scalar4", "scalar8"))
        assert all(limit <= 371 / 2 for limit in ceilings["backward"][dtype].values())


def test_executed_work_per_head_size():
    """--heads: the point loop of the variant the host picks, times lanes and passes, over D."""
    rows = [row(kernel=k, dtype="fp32", path=p, V=v, loop=loop, per_point_channel=loop / v)
            for k, p, v, loop in [("forward", "scalar", 4, 80), ("forward", "scalar", 1, 60),
                                  ("forward", "vector", 4, 72), ("backward", "scalar", 4, 240),
                                  ("backward", "scalar", 1, 140), ("backward", "vector", 4, 160)]]
    eff = {(e["D"], e["kernel"]): e for e in sass_report.effective_rows(rows, [1, 5, 32, 33]) if e["dtype"] == "fp32"}
    assert eff[(1, "forward")]["per_point_channel"] == {"sm_90": 60.0}
    assert eff[(5, "forward")]["per_point_channel"] == {"sm_90": 32.0}  # 2 lanes x 80 / 5
    assert eff[(5, "backward")]["per_point_channel"] == {"sm_90": 96.0}
    assert eff[(32, "forward")]["per_point_channel"] == {"sm_90": 18.0}  # 8 lanes x 72 / 32
    assert (eff[(33, "forward")]["G"], eff[(33, "backward")]["G"]) == (9, 16)
    assert eff[(33, "backward")]["per_point_channel"] == {"sm_90": round(16 * 240 / 33, 2)}
    table = sass_report.format_effective(list(eff.values()))
    assert "| 5 | fp32 | forward | scalar (4) | 2 x 1 | 32.0 |" in table
    assert sass_report.plan_for(256, "fp32", "forward") == ("vector", 4, 32, 2)
    assert sass_report.plan_for(300, "fp32", "forward") == ("vector", 4, 25, 3)


def test_main_with_a_binary_and_log(tmp_path, monkeypatch, capsys):
    """--binary/--ptxas-log (check_cuda_build.sh's use): disassembly stubbed, the checks run."""
    log = tmp_path / "log"
    log.write_text(PTXAS)
    monkeypatch.setattr(sass_report, "disassemble", lambda binary: SASS)
    ceilings = tmp_path / "ceilings.json"
    ceilings.write_text(json.dumps({"ceilings": {"forward": {"fp32": {"vector": 2}}}}))
    monkeypatch.setattr(sass_report, "CEILINGS", ceilings)
    assert sass_report.main(["--binary", "x.so", "--ptxas-log", str(log)]) == 0
    # the old kernel in SASS has neither ptxas figures nor a point loop: --check fails on it
    assert sass_report.main(["--binary", "x.so", "--ptxas-log", str(log), "--check"]) == 1
    err = capsys.readouterr().err
    assert "FAIL sm_90 forward fp32 scalar int64: no ptxas -v figures" in err
