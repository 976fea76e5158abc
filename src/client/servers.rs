//! The client's server list: where the next connection goes, and which
//! instances to avoid for a while because they refused or are draining.

use std::time::{Duration, Instant};

/// The servers of one client, the one it uses now, and a quarantine
/// deadline per server.
#[derive(Debug)]
pub(super) struct Servers {
    list: Vec<String>,
    current: usize,
    avoid_until: Vec<Option<Instant>>,
}

impl Servers {
    /// `list` (`host:port` each), starting at index `first` (taken modulo
    /// the length).
    pub(super) fn new(list: Vec<String>, first: usize) -> Servers {
        let current = if list.is_empty() {
            0
        } else {
            first % list.len()
        };
        let avoid_until = vec![None; list.len()];
        Servers {
            list,
            current,
            avoid_until,
        }
    }

    /// How many servers there are.
    pub(super) fn len(&self) -> usize {
        self.list.len()
    }

    /// The `host:port` of server `i`.
    pub(super) fn name(&self, i: usize) -> &str {
        &self.list[i]
    }

    /// Makes `i` the server connections go to first.
    pub(super) fn set_current(&mut self, i: usize) {
        self.current = i;
    }

    /// Avoids server `i` for `period` and moves on to the next one.
    pub(super) fn quarantine(&mut self, i: usize, period: Duration) {
        self.avoid_until[i] = Some(Instant::now() + period);
        if i == self.current && !self.list.is_empty() {
            self.current = (i + 1) % self.list.len();
        }
    }

    /// Whether server `i` is being avoided now.
    fn is_quarantined(&self, i: usize, now: Instant) -> bool {
        self.avoid_until[i].is_some_and(|until| now < until)
    }

    /// Whether some server is not being avoided now.
    pub(super) fn any_available(&self) -> bool {
        let now = Instant::now();
        (0..self.len()).any(|i| !self.is_quarantined(i, now))
    }

    /// Every index once, in the order to try them: from the current one
    /// onwards, those not quarantined first, then the quarantined ones by
    /// the end of their quarantine (the soonest back first).
    pub(super) fn order(&self) -> Vec<usize> {
        let now = Instant::now();
        let n = self.len();
        let rotated = (0..n).map(|k| (self.current + k) % n);
        let (mut order, mut avoided): (Vec<usize>, Vec<usize>) =
            rotated.partition(|&i| !self.is_quarantined(i, now));
        avoided.sort_by_key(|&i| self.avoid_until[i]);
        order.extend(avoided);
        order
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn servers(n: usize, first: usize) -> Servers {
        Servers::new((0..n).map(|i| format!("s{i}:1")).collect(), first)
    }

    #[test]
    fn order_starts_at_the_current_server_and_wraps() {
        let s = servers(3, 4);
        assert_eq!(s.order(), vec![1, 2, 0]);
        assert!(s.any_available());
    }

    #[test]
    fn quarantined_servers_come_last_soonest_back_first() {
        let mut s = servers(4, 0);
        s.quarantine(0, Duration::from_secs(60));
        assert_eq!(s.current, 1, "moves on from a quarantined current server");
        s.quarantine(2, Duration::from_secs(5));
        assert_eq!(s.order(), vec![1, 3, 2, 0]);
        s.quarantine(1, Duration::from_secs(30));
        s.quarantine(3, Duration::from_secs(30));
        assert!(!s.any_available());
        assert_eq!(s.order()[0], 2);
    }

    #[test]
    fn quarantine_ends() {
        let mut s = servers(2, 0);
        s.quarantine(0, Duration::from_millis(1));
        std::thread::sleep(Duration::from_millis(5));
        s.set_current(0);
        assert_eq!(s.order(), vec![0, 1]);
    }

    #[test]
    fn an_empty_list_has_no_order() {
        let s = servers(0, 3);
        assert!(s.order().is_empty());
        assert!(!s.any_available());
    }
}
