"""CPU facts the serving path acts on: the thread rule and whether int8 products are exact at full speed."""

from __future__ import annotations

from leukostage.cores import cpu_has_vnni, has_vnni, threads_per_worker

ZEN4 = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512bw avx512_vnni avx512_bf16\nbugs\t\t: sysret_ss_attrs\n"
ALDER_LAKE = "flags\t\t: fpu sse2 avx2 fma avx_vnni\n"
ZEN3 = "processor\t: 0\nflags\t\t: fpu sse2 avx2 fma sha_ni vaes\n"  # AVX2 without VNNI: its int8 products can saturate
ARM = "processor\t: 0\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics asimddp\n"


def test_vnni_is_read_from_the_cpu_flags():
    assert has_vnni(ZEN4) and has_vnni(ALDER_LAKE)
    assert not has_vnni(ZEN3)
    assert not has_vnni(ARM) and not has_vnni("")
    assert not has_vnni("flags\t\t: avx512_vnnix avx2\n")  # whole flag names only


def test_this_machine_answer_is_a_bool_and_stable():
    assert cpu_has_vnni() in (True, False) and cpu_has_vnni() == cpu_has_vnni()


def test_threads_per_worker_share_the_cores():
    assert threads_per_worker(2, cores=2) == 1
    assert threads_per_worker(1, cores=2) == 2
    assert threads_per_worker(4, cores=2) == 1  # never zero
    assert threads_per_worker(0, cores=4) == 4
