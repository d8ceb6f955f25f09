//! CPU time of this process's threads whose name starts with a prefix (the
//! in-process relay's shard threads), in nanoseconds from
//! `/proc/self/task/*/schedstat` (time on CPU, ns precision).

/// Time on CPU of matching threads, ns.
pub fn threads_cpu_ns(prefix: &str) -> u64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else { return 0 };
    let mut total = 0;
    for t in tasks.flatten() {
        let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
        if !comm.trim().starts_with(prefix) {
            continue;
        }
        let sched = std::fs::read_to_string(t.path().join("schedstat")).unwrap_or_default();
        total += sched.split_whitespace().next().and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    }
    total
}
