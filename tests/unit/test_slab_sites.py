"""Reading SLUB's alloc_traces (slub_debug=U): which live objects unloaded code allocated."""

from collections import Counter

import pytest

from bifrost_testing import slab_sites
from bifrost_testing.slab_sites import GONE

pytestmark = pytest.mark.unit

# The shape of /sys/kernel/debug/slab/kmalloc-32/alloc_traces on 6.1 and 6.12: a count
# line (site, age, pid, cpus), the stack, a blank line. The third stack ran through a
# module that was unloaded since (bare addresses); the fourth through a loaded one.
TRACES = """\
    101 alloc_cpumask_var_node+0x25/0x40 age=11801/11801/11801 pid=1 cpus=0
        alloc_cpumask_var_node+0x25/0x40
        cpupri_init+0x3c/0xe0
        kernel_init+0x1a/0x1c0

     54 __kernfs_new_node+0x40/0x200 waste=108/2 age=11671/11673/11676 pid=1 cpus=1
        kstrdup+0x38/0x70
        __kernfs_new_node+0x40/0x200
        kernfs_create_link+0x35/0xb0

      3 0xffffffffc0a1b2c3 age=2000/2100/2200 pid=901-977 cpus=0-1
        0xffffffffc0a1b2c3
        0xffffffffc0a1a010
        do_one_initcall+0x58/0x320
        do_init_module+0x90/0x260

      2 __kmalloc_cache_noprof+0x1f0/0x2e0 age=50 pid=700 cpus=1
        __kmalloc_cache_noprof+0x1f0/0x2e0
        veth_newlink+0x22/0x30 [veth]
        rtnl_newlink+0x8a/0x100

"""


def test_each_stack_is_counted_without_offsets_and_with_unloaded_code_named():
    got = slab_sites.parse(TRACES)
    assert got == Counter(
        {
            ("alloc_cpumask_var_node", "alloc_cpumask_var_node", "cpupri_init", "kernel_init"): 101,
            ("__kernfs_new_node", "kstrdup", "__kernfs_new_node", "kernfs_create_link"): 54,
            (GONE, GONE, GONE, "do_one_initcall", "do_init_module"): 3,
            (
                "__kmalloc_cache_noprof",
                "__kmalloc_cache_noprof",
                "veth_newlink [veth]",
                "rtnl_newlink",
            ): 2,
        }
    )


def test_the_same_stack_twice_adds_up():
    block = "      4 0xffffffffc0000010 age=1 pid=1\n        0xffffffffc0000010\n\n"
    other = block.replace("c0000010", "c0ff0010").replace("      4", "      5")
    assert slab_sites.parse(block + other) == Counter({(GONE, GONE): 9})


def test_only_objects_of_unloaded_code_and_only_growth_count():
    before = {"kmalloc-32": slab_sites.parse(TRACES)}
    after_text = TRACES.replace("      3 0xffffffffc0a1b2c3", "    203 0xffffffffc0a1b2c3")
    after_text = after_text.replace("    101 alloc_cpumask", "    901 alloc_cpumask")
    after = {"kmalloc-32": slab_sites.parse(after_text), "kmalloc-8": Counter()}
    gone_before = slab_sites.of_unloaded_code(before)
    gone_after = slab_sites.of_unloaded_code(after)
    assert gone_after == {"kmalloc-32": Counter({(GONE, GONE, GONE, "do_one_initcall",
                                                  "do_init_module"): 203})}  # fmt: skip
    leaked = slab_sites.grown(gone_before, gone_after)
    assert leaked == {"kmalloc-32": Counter({(GONE, GONE, GONE, "do_one_initcall",
                                              "do_init_module"): 200})}  # fmt: skip
    assert "kmalloc-32: 200 objects" in slab_sites.render(leaked)
    assert slab_sites.grown(gone_after, gone_before) == {}


def test_fewer_objects_after_is_no_growth():
    before = {"kmalloc-32": slab_sites.parse(TRACES)}
    assert slab_sites.grown(before, {"kmalloc-32": Counter()}) == {}
    assert slab_sites.grown(before, before) == {}


def test_a_cache_with_no_live_object_reads_as_empty():
    assert slab_sites.parse("No data\n") == Counter()
