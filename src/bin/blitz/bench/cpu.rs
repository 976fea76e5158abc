//! CPU accounting of a run. With `server_pid` the server's `utime + stime`
//! (from `/proc/PID/stat`) is read when the measured phase starts and when
//! it ends. With `postgres_pid` (the postmaster) the same is done for
//! PostgreSQL: the postmaster's own and reaped children's times (`cutime +
//! cstime`) plus every live child's, so backends that exit during the run
//! are still counted. The load generator's own time comes from
//! getrusage(2).

/// Clock ticks per second of `/proc/PID/stat` times.
pub(super) fn ticks_per_second() -> f64 {
    use nix::unistd::{sysconf, SysconfVar};
    match sysconf(SysconfVar::CLK_TCK) {
        Ok(Some(t)) if t > 0 => t as f64,
        _ => 100.0,
    }
}

/// The fields of `/proc/PID/stat` after the command name: `(ppid, utime +
/// stime, cutime + cstime)` in clock ticks.
fn parse_stat(stat: &str) -> Option<(u32, u64, u64)> {
    // The command name is in parentheses and may hold spaces and ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // f[0] is field 3 (state): ppid is field 4, utime..cstime fields 14..17.
    let n = |i: usize| f.get(i)?.parse::<u64>().ok();
    let ppid = f.get(1)?.parse::<u32>().ok()?;
    Some((ppid, n(11)? + n(12)?, n(13)? + n(14)?))
}

/// `/proc/PID/stat` of `pid`, parsed; `None` once it is gone.
fn read_stat(pid: u32) -> Option<(u32, u64, u64)> {
    parse_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// CPU ticks used by process `pid` (all its threads).
pub(super) fn process_ticks(pid: u32) -> Option<u64> {
    read_stat(pid).map(|(_, own, _)| own)
}

/// CPU ticks used by the threads of `pid` whose name starts with one of
/// `prefixes` (`/proc/PID/task/*/comm`).
pub(super) fn thread_ticks(pid: u32, prefixes: &[&str]) -> Option<u64> {
    let mut total = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))
        .ok()?
        .flatten()
    {
        let path = task.path();
        let Ok(comm) = std::fs::read_to_string(path.join("comm")) else {
            continue;
        };
        if !prefixes.iter().any(|p| comm.starts_with(p)) {
            continue;
        }
        let stat = std::fs::read_to_string(path.join("stat")).unwrap_or_default();
        total += parse_stat(&stat).map_or(0, |(_, own, _)| own);
    }
    Some(total)
}

/// CPU ticks used by `pid`, its reaped children, and its live children:
/// for the postmaster, all of PostgreSQL.
pub(super) fn tree_ticks(pid: u32) -> Option<u64> {
    let (_, own, reaped) = read_stat(pid)?;
    let mut total = own + reaped;
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(child) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if let Some((ppid, ticks, _)) = read_stat(child) {
            if ppid == pid {
                total += ticks;
            }
        }
    }
    Some(total)
}

/// This process's user + system CPU time, seconds.
pub(super) fn own_cpu_seconds() -> f64 {
    use nix::sys::resource::{getrusage, UsageWho};
    use nix::sys::time::TimeVal;
    let Ok(usage) = getrusage(UsageWho::RUSAGE_SELF) else {
        return 0.0;
    };
    let secs = |t: TimeVal| t.tv_sec() as f64 + t.tv_usec() as f64 / 1e6;
    secs(usage.user_time()) + secs(usage.system_time())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_stat_fields_are_found_after_the_name() {
        let stat = "1234 (post gres) S 99 1234 1234 0 -1 4194560 100 0 0 0 250 50 7 3 20 0 1 0";
        assert_eq!(parse_stat(stat), Some((99, 300, 10)));
        let me = std::process::id();
        assert!(process_ticks(me).is_some());
        assert!(tree_ticks(me).is_some());
        assert!(thread_ticks(me, &["nobody-has-this-name"]) == Some(0));
    }
}
