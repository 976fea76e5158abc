//! The arithmetic of the one connection budget: how `max_connections −
//! db.reserved_connections` is split among the live instances. Pure
//! functions, so every instance computes the same split from the same
//! registry rows.

/// Connections each instance holds outside its pool: the housekeeping
/// connection (heartbeat, rebalancing, session `last_used` writes, the
/// idempotency sweep).
pub const HOUSEKEEPING: u64 = 1;

/// The pool connections each instance may hold, in the order of `pools`
/// (each instance's configured `db.pool_size`), out of `budget`
/// connections in all, housekeeping included.
///
/// When every configured pool fits, each gets its pool. Otherwise the
/// connections left after housekeeping are split in proportion to the
/// configured pools (largest remainders first, ties to the earlier
/// instance), each at least 1 and at most its pool. `None` when the budget
/// cannot give every instance one pool connection and its housekeeping.
pub fn targets(budget: u64, pools: &[u64]) -> Option<Vec<u64>> {
    let n = pools.len() as u64;
    let available = budget.checked_sub(n * HOUSEKEEPING)?;
    if available < n || pools.contains(&0) {
        return None;
    }
    let total: u64 = pools.iter().sum();
    if total <= available {
        return Some(pools.to_vec());
    }
    // Proportional quotas (below each pool, since total > available).
    let mut shares: Vec<u64> = pools
        .iter()
        .map(|&p| (available * p / total).max(1))
        .collect();
    let remainder = |i: usize| (available * pools[i]) % total;
    let mut sum: u64 = shares.iter().sum();
    while sum < available {
        let best = (0..shares.len())
            .filter(|&i| shares[i] < pools[i])
            .max_by(|&a, &b| remainder(a).cmp(&remainder(b)).then(b.cmp(&a)))
            .expect("total > available leaves an instance below its pool");
        shares[best] += 1;
        sum += 1;
    }
    while sum > available {
        // Minimum-1 bumps overshot: take back from the largest share.
        let largest = (0..shares.len())
            .filter(|&i| shares[i] > 1)
            .max_by(|&a, &b| shares[a].cmp(&shares[b]).then(b.cmp(&a)))
            .expect("available >= n leaves a share above 1");
        shares[largest] -= 1;
        sum -= 1;
    }
    Some(shares)
}

/// The fair shares as the registry uses them: split so that one connection
/// of the budget stays free for the housekeeping connection of the next
/// instance to join, while that still gives everyone at least one; else
/// split the whole budget (then no further instance fits, and one that
/// tries is refused).
pub fn fair_shares(budget: u64, pools: &[u64]) -> Option<Vec<u64>> {
    budget
        .checked_sub(JOIN_SLOT)
        .and_then(|b| targets(b, pools))
        .or_else(|| targets(budget, pools))
}

/// Connections of the budget kept free for a joining instance's
/// housekeeping connection (it must connect before it can register).
pub const JOIN_SLOT: u64 = 1;

/// Connections not held by anyone: the budget minus every instance's
/// registered share and housekeeping (negative while an instance that
/// should shrink has not yet released).
pub fn free(budget: u64, registered: &[u64]) -> i64 {
    let held: u64 = registered.iter().map(|s| s + HOUSEKEEPING).sum();
    budget as i64 - held as i64
}

/// Where a member entering a budget stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entry {
    /// It registers `share` now (its fair share is `target`; it grows into
    /// the rest as the others release).
    Room {
        /// Its fair share.
        target: u64,
        /// What it may register now: the fair share, or the free room when less.
        share: u64,
    },
    /// The budget cannot give every member one connection and its housekeeping.
    NoRoom,
    /// Others hold what this member needs for its own housekeeping
    /// connection until they release: try again shortly.
    Busy,
}

/// How a member enters a budget: `pools` are the live members' configured
/// pools with the entering one last, `held` every registered share already
/// in the budget (members not yet reaped included). It registers its fair
/// share or the free room left after its housekeeping connection, the
/// smaller; never more.
pub fn enter(budget: u64, pools: &[u64], held: &[u64]) -> Entry {
    let Some(targets) = fair_shares(budget, pools) else {
        return Entry::NoRoom;
    };
    let target = *targets.last().expect("the entering member");
    let free = free(budget, held) - HOUSEKEEPING as i64;
    if free < 0 {
        return Entry::Busy;
    }
    Entry::Room {
        target,
        share: target.min(free as u64),
    }
}

/// One round's move of member `me` (an index into `pools`, the live
/// members' configured pools) whose registered share is `current` and who
/// has `open` connections open: up towards its fair share into the free
/// room (`held`: every registered share in the budget), or down to it once
/// `open` is within it. Returns its fair share and its next registered
/// share. With too many members for one each, it keeps what it holds
/// (never more than 1).
pub fn step(budget: u64, pools: &[u64], me: usize, held: &[u64], open: u64) -> (u64, u64) {
    let current = held[me];
    let target = fair_shares(budget, pools).map_or(current.min(1), |t| t[me]);
    let free = free(budget, held);
    let next = if target > current {
        current + (target - current).min(free.max(0) as u64)
    } else if open <= target {
        target
    } else {
        current
    };
    (target, next)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pools_that_fit_are_kept() {
        assert_eq!(targets(100, &[4, 8]), Some(vec![4, 8]));
        assert_eq!(targets(14, &[4, 8]), Some(vec![4, 8]));
    }

    #[test]
    fn a_short_budget_is_split_in_proportion() {
        // 37 − 3 housekeeping = 34 for three pools of 20.
        assert_eq!(targets(37, &[20, 20, 20]), Some(vec![12, 11, 11]));
        assert_eq!(targets(22, &[10, 30]), Some(vec![5, 15]));
        let t = targets(27, &[20, 20, 20]).unwrap();
        assert_eq!(t.iter().sum::<u64>(), 24);
    }

    #[test]
    fn every_instance_gets_at_least_one() {
        assert_eq!(targets(6, &[1, 100, 1]), Some(vec![1, 1, 1]));
        assert_eq!(targets(8, &[1, 100, 1]), Some(vec![1, 3, 1]));
        let t = targets(30, &[1, 1, 1, 1000]).unwrap();
        assert_eq!(t, vec![1, 1, 1, 23]);
    }

    #[test]
    fn no_room_for_one_each_is_none() {
        assert_eq!(targets(5, &[4, 4, 4]), None);
        assert_eq!(targets(6, &[4, 4, 4]), Some(vec![1, 1, 1]));
        assert_eq!(targets(1, &[1]), None);
        assert_eq!(targets(0, &[]), Some(vec![]));
    }

    #[test]
    fn one_connection_stays_free_for_a_joiner_while_there_is_room() {
        assert_eq!(fair_shares(37, &[20, 20]), Some(vec![17, 17]));
        assert_eq!(fair_shares(37, &[20, 20, 20]), Some(vec![11, 11, 11]));
        assert_eq!(fair_shares(6, &[20, 20, 20]), Some(vec![1, 1, 1]));
        assert_eq!(fair_shares(6, &[20, 20, 20, 20]), None);
    }

    #[test]
    fn an_entering_member_takes_only_free_room() {
        // 20 − 2 housekeeping; one joined with its whole pool of 10.
        assert_eq!(
            enter(20, &[10, 10], &[10]),
            Entry::Room {
                target: 8,
                share: 8
            }
        );
        assert_eq!(
            enter(14, &[10, 10], &[10]),
            Entry::Room {
                target: 5,
                share: 2
            }
        );
        assert_eq!(
            enter(12, &[10, 10], &[10]),
            Entry::Room {
                target: 4,
                share: 0
            }
        );
        assert_eq!(enter(11, &[10, 10], &[10]), Entry::Busy);
        assert_eq!(enter(3, &[10, 10], &[1]), Entry::NoRoom);
    }

    #[test]
    fn a_step_grows_into_free_room_and_shrinks_once_released() {
        // Two members of pool 10 in 14, one connection kept free for a
        // joiner: 11 to split, 6 and 5.
        let pools = [10, 10];
        assert_eq!(
            step(14, &pools, 0, &[10, 2], 10),
            (6, 10),
            "still open: kept"
        );
        assert_eq!(step(14, &pools, 0, &[10, 2], 6), (6, 6), "released");
        assert_eq!(
            step(14, &pools, 1, &[6, 2], 0),
            (5, 5),
            "grows into free room"
        );
        // An unreaped member (third entry, not in pools) still holds its room.
        assert_eq!(step(14, &pools, 1, &[6, 2, 3], 0), (5, 2));
    }

    #[test]
    fn free_counts_housekeeping() {
        assert_eq!(free(10, &[3, 4]), 1);
        assert_eq!(free(5, &[3, 4]), -4);
    }
}
