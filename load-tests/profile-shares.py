"""Groups `perf report --no-children --sort sym -g none` lines (from stdin) into where a fan-out
server's CPU goes, by symbol name. The patterns are coarse on purpose: each sample lands in the
first group whose pattern its symbol matches, and the groups are named for what a delivery costs.
"""
import re
import sys

GROUPS = [
    ("locking (spin locks, mutexes, atomics waits)",
     r"spin_lock|spin_unlock|raw_spin|mutex|Mutex|futex|RwLock|parking_lot|BiLock|lock::"),
    ("wake-ups and scheduling (task wakers, epoll, context switches)",
     r"wake|waker|Waker|notify|Notify|schedul|switch|epoll|ep_poll|ep_send|poll_readiness|"
     r"ScheduledIo|park|runtime::task|queue::Local|pick_next|enqueue|dequeue|idle|select_task|"
     r"finish_task_switch|__schedule|try_to_wake|ttwu"),
    ("copying (memcpy, copy to and from user space)",
     r"memcpy|memmove|copy_user|copy_to|copy_from|_copy_|extend_from_slice|clone_from|rep_movs"),
    ("allocation (malloc, free, skb alloc and release)",
     r"malloc|free|alloc|dealloc|kmem_cache|slab|skb_release|__kfree|page_frag|consume_skb"),
    ("framing and encoding (tungstenite, serde_json)",
     r"tungstenite|serde|json|format_into|Frame::|frame::"),
    ("syscalls and the TCP/IP stack",
     r"tcp_|ip_|inet|sock|skb|__dev|dev_|net_|netif|loopback|sys_|syscall|entry_SYSCALL|"
     r"do_syscall|fdget|fput|__x64|lookup|nf_|raw_local|__local_bh|softirq|bh_|__napi|napi|"
     r"validate_xmit|qdisc|sch_|rcu"),
]

total = 0.0
kernel = 0.0
shares = {name: 0.0 for name, _ in GROUPS}
other = 0.0
line_re = re.compile(r"^\s*([0-9.]+)%\s+\[([k.])\]\s+(.*)$")
for line in sys.stdin:
    m = line_re.match(line)
    if not m:
        continue
    pct, _, sym = float(m.group(1)), m.group(2), m.group(3)
    total += pct
    if m.group(2) == "k":
        kernel += pct
    for name, pat in GROUPS:
        if re.search(pat, sym):
            shares[name] += pct
            break
    else:
        other += pct

print(f"samples accounted: {total:.1f} %, of which in the kernel: {kernel:.1f} %")
for name, _ in GROUPS:
    print(f"{shares[name]:6.1f} %  {name}")
print(f"{other:6.1f} %  other")
