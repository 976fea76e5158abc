//! CPU detection: the physical cores (not hyperthreads) this process may
//! run on, read from the sysfs CPU topology, for the pool-size formula.

use std::path::Path;

/// Physical cores (not hyperthreads) available to this process, counted as
/// distinct (package, core) pairs among the CPUs it may run on.
pub fn physical_cores() -> Option<u64> {
    let n = count_physical_cores(Path::new("/sys/devices/system/cpu"))?;
    let allowed = std::thread::available_parallelism()
        .map(|n| n.get() as u64)
        .unwrap_or(n);
    Some(n.min(allowed))
}

/// Distinct (package, core) pairs among the online CPUs of the sysfs CPU
/// directory `cpus` (`/sys/devices/system/cpu`); `None` when its topology
/// cannot be read.
fn count_physical_cores(cpus: &Path) -> Option<u64> {
    let online = std::fs::read_to_string(cpus.join("online")).ok()?;
    let mut cores = std::collections::BTreeSet::new();
    for cpu in parse_cpu_list(online.trim())? {
        let dir = cpus.join(format!("cpu{cpu}/topology"));
        let read = |f: &str| std::fs::read_to_string(dir.join(f)).ok();
        let package = read("physical_package_id")?;
        let core = read("core_id")?;
        cores.insert((package.trim().to_string(), core.trim().to_string()));
    }
    let n = cores.len() as u64;
    (n > 0).then_some(n)
}

/// `"0-3,8,10-11"` → `[0, 1, 2, 3, 8, 10, 11]`.
fn parse_cpu_list(text: &str) -> Option<Vec<u32>> {
    let mut cpus = Vec::new();
    for part in text.split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => cpus.extend(a.parse::<u32>().ok()?..=b.parse::<u32>().ok()?),
            None => cpus.push(part.parse().ok()?),
        }
    }
    Some(cpus)
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    #[test]
    fn cpu_lists_parse() {
        assert_eq!(parse_cpu_list("0-3,8"), Some(vec![0, 1, 2, 3, 8]));
        assert_eq!(parse_cpu_list("0"), Some(vec![0]));
        assert_eq!(parse_cpu_list("x"), None);
    }

    /// A sysfs CPU directory: `online`, and per CPU its (package, core).
    fn cpu_fixture(name: &str, online: &str, cpus: &[(u32, u32, u32)]) -> PathBuf {
        let root = std::env::temp_dir().join(format!("blitz-cpus-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).unwrap();
        std::fs::write(root.join("online"), online).unwrap();
        for &(cpu, package, core) in cpus {
            let dir = root.join(format!("cpu{cpu}/topology"));
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("physical_package_id"), format!("{package}\n")).unwrap();
            std::fs::write(dir.join("core_id"), format!("{core}\n")).unwrap();
        }
        root
    }

    #[test]
    fn physical_cores_count_cores_not_hyperthreads() {
        // Two packages of two cores, two hyperthreads each: 8 CPUs, 4 cores.
        let smt: Vec<_> = (0..8).map(|cpu| (cpu, cpu / 4, (cpu / 2) % 2)).collect();
        let root = cpu_fixture("smt", "0-7\n", &smt);
        assert_eq!(count_physical_cores(&root), Some(4));
        // CPUs 4-7 offline: only package 0's two cores count.
        std::fs::write(root.join("online"), "0-3\n").unwrap();
        assert_eq!(count_physical_cores(&root), Some(2));
        // A CPU listed online without a topology: the count cannot be trusted.
        std::fs::write(root.join("online"), "0-8\n").unwrap();
        assert_eq!(count_physical_cores(&root), None);
        let _ = std::fs::remove_dir_all(&root);
        assert_eq!(count_physical_cores(&root), None, "no sysfs at all");
    }
}
