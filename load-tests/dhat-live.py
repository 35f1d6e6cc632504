"""Summarises a `valgrind --tool=dhat` profile (its JSON output, the first argument) as the heap
that was live at the global peak (t-gmax), per allocation site, divided by a connection count
(the second argument): what each open connection keeps on the heap. A site is named by its first
frames inside giftd or the crates it calls, skipping the allocator's own frames.
"""
import json
import sys

path, conns = sys.argv[1], int(sys.argv[2])
top = int(sys.argv[3]) if len(sys.argv) > 3 else 25
with open(path) as f:
    prof = json.load(f)
frames = prof["ftbl"]
# The allocator's frames and the standard library's, which say how, not what.
SKIP = ("vgpreload", "__rustc::", "(alloc.rs:", "library/alloc/", "library/std/", "library/core/", "unix.rs:", "raw/alloc.rs",
        "raw_vec", "UnknownInlinedFun", "__rust_", "sqlite3MemMalloc", "mallocWithAlarm")


def site(pp):
    names = []
    for i in pp["fs"]:
        text = frames[i]
        fn = text.split(": ", 1)[-1]
        if any(s in text for s in SKIP) and not names:
            continue
        names.append(fn[:150])
        if len(names) == 4:
            break
    return names


pps = [pp for pp in prof["pps"] if pp.get("gb", 0) > 0]
pps.sort(key=lambda pp: pp["gb"], reverse=True)
total = sum(pp["gb"] for pp in pps)
blocks = sum(pp["gbk"] for pp in pps)
print(f"live heap at t-gmax: {total} B in {blocks} blocks = {total / conns:.0f} B and "
      f"{blocks / conns:.1f} blocks per connection ({conns} connections)")
for pp in pps[:top]:
    print(f"{pp['gb']:>10} B {pp['gb'] / conns:>7.0f} B/conn  blocks={pp['gbk']}")
    for name in site(pp):
        print(f"           {name}")
