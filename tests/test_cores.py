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


def cpuinfo(flags: str, processors: int = 2) -> str:
    """A /proc/cpuinfo as Linux writes it on x86: one block per processor, a "vmx flags" line after "flags"."""
    block = (
        "processor\t: {n}\nvendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Xeon(R)\n"
        "flags\t\t: {flags}\nvmx flags\t: vnmi preemption_timer invvpid ept_x_only\nbugs\t\t: spectre_v1\n\n"
    )
    return "".join(block.format(n=n, flags=flags) for n in range(processors))


ICELAKE_FLAGS = "fpu vme de pse tsc msr pae mce cx8 apic sse sse2 ssse3 avx avx2 avx512f avx512dq avx512_vnni"


def test_cpu_has_vnni_reads_proc_cpuinfo(monkeypatch):
    """What the serving path acts on: this machine's /proc/cpuinfo, parsed; no VNNI where it cannot be read."""
    import leukostage.cores as cores

    def reading(text: str | None):
        class FakePath:
            def __init__(self, path):
                assert path == "/proc/cpuinfo"

            def read_text(self):
                if text is None:
                    raise PermissionError("/proc/cpuinfo")
                return text

        monkeypatch.setattr(cores, "Path", FakePath)
        return cpu_has_vnni.__wrapped__()  # the uncached function

    assert reading(cpuinfo(ICELAKE_FLAGS)) is True
    assert reading(cpuinfo(ICELAKE_FLAGS.replace(" avx512_vnni", ""))) is False
    assert reading(cpuinfo("fpu sse2 avx2 avx_vnni")) is True
    assert reading(None) is False


def test_this_machine_answer_matches_its_flags():
    """Read independently (a regular expression over every processor's flags line) from the real /proc/cpuinfo."""
    import re
    from pathlib import Path

    text = Path("/proc/cpuinfo").read_text()
    flags = re.findall(r"^flags\s*:(.*)$", text, re.MULTILINE)
    expected = bool(flags) and bool(re.search(r"(?<!\S)(avx512_vnni|avx_vnni)(?!\S)", flags[0]))
    assert cpu_has_vnni() is expected


def test_threads_per_worker_share_the_cores():
    assert threads_per_worker(2, cores=2) == 1
    assert threads_per_worker(1, cores=2) == 2
    assert threads_per_worker(4, cores=2) == 1  # never zero
    assert threads_per_worker(0, cores=4) == 4
