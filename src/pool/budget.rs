//! The connection budget: every worker may hold every pool full at once, so the product must
//! fit what the server allows us, or jobs fail with "too many clients already" under load.

/// Checks `workers_max × Σ pool_size + others ≤ budget`, where `others` counts the sessions
/// outside the workers (the queue keeper's). The error shows the arithmetic, e.g.
/// "16 workers × (main: 2 + reports: 1) + 2 (queue keeper) = 50 connections >
/// max_connections_budget 40".
pub fn check_connection_budget(
    workers_max: usize,
    pools: &[(&str, usize)],
    others: usize,
    budget: usize,
) -> Result<(), String> {
    let per_worker: usize = pools.iter().map(|(_, size)| size).sum();
    let total = workers_max
        .saturating_mul(per_worker)
        .saturating_add(others);
    if total <= budget {
        return Ok(());
    }
    let sizes: Vec<String> = pools
        .iter()
        .map(|(name, size)| format!("{name}: {size}"))
        .collect();
    let others = if others > 0 {
        format!(" + {others} (queue keeper)")
    } else {
        String::new()
    };
    Err(format!(
        "{workers_max} workers × ({}){others} = {total} connections > max_connections_budget \
         {budget}; lower workers.max or a pool_size, or raise max_connections_budget",
        sizes.join(" + ")
    ))
}

#[cfg(test)]
mod tests {
    use super::check_connection_budget;

    #[test]
    fn over_budget_shows_the_arithmetic() {
        let error = check_connection_budget(16, &[("main", 2), ("reports", 1)], 0, 40).unwrap_err();
        assert!(
            error.starts_with(
                "16 workers × (main: 2 + reports: 1) = 48 connections > max_connections_budget 40"
            ),
            "{error}"
        );
        let error = check_connection_budget(4, &[("main", 2)], 2, 9).unwrap_err();
        assert!(
            error.starts_with("4 workers × (main: 2) + 2 (queue keeper) = 10 connections"),
            "{error}"
        );
    }

    #[test]
    fn exactly_at_budget_fits() {
        assert_eq!(check_connection_budget(8, &[("main", 5)], 0, 40), Ok(()));
        assert_eq!(check_connection_budget(8, &[("main", 4)], 8, 40), Ok(()));
        assert_eq!(check_connection_budget(0, &[("main", 5)], 0, 0), Ok(()));
        assert_eq!(check_connection_budget(4, &[], 0, 0), Ok(()));
    }
}
