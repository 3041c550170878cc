use super::*;

#[test]
fn lifetime_jitter_spreads_expiries_within_the_window() {
    let settings = PoolSettings::new()
        .max_lifetime(Some(Duration::from_secs(30 * 60)))
        .lifetime_jitter(Duration::from_secs(120));
    let mut state = State::new(getpid());
    let lifetimes: Vec<Duration> = (0..200)
        .map(|_| state.lifetime(&settings).unwrap())
        .collect();
    let shortest = Duration::from_secs(28 * 60);
    let longest = Duration::from_secs(30 * 60);
    assert!(lifetimes.iter().all(|l| (shortest..=longest).contains(l)));
    let distinct: std::collections::HashSet<_> = lifetimes.iter().collect();
    assert!(
        distinct.len() > 150,
        "only {} distinct lifetimes",
        distinct.len()
    );
    let spread = *lifetimes.iter().max().unwrap() - *lifetimes.iter().min().unwrap();
    assert!(spread > Duration::from_secs(60), "spread {spread:?}");
}

#[test]
fn no_max_lifetime_means_no_expiry_and_jitter_never_underflows() {
    let mut state = State::new(getpid());
    let forever = PoolSettings::new().max_lifetime(None);
    assert_eq!(state.lifetime(&forever), None);
    let tiny = PoolSettings::new()
        .max_lifetime(Some(Duration::from_secs(1)))
        .lifetime_jitter(Duration::from_secs(60));
    assert!(state.lifetime(&tiny).unwrap() <= Duration::from_secs(1));
}

#[test]
fn auth_and_setup_errors_are_not_retried() {
    assert!(is_permanent(
        "password authentication failed for user \"app\" (SQLSTATE 28P01)"
    ));
    assert!(is_permanent(
        "database \"nope\" does not exist (SQLSTATE 3D000)"
    ));
    assert!(is_permanent(&format!("{NO_PASSWORD}: none was given")));
    assert!(!is_permanent(
        "the database system is starting up (SQLSTATE 57P03)"
    ));
    assert!(!is_permanent(
        "cannot connect to 127.0.0.1:5432: Connection refused"
    ));
}

#[test]
fn pool_is_send_and_sync_and_opens_nothing() {
    fn shared_between_threads<T: Send + Sync>() {}
    shared_between_threads::<Pool>();
    let info = ConnInfo::parse("host=127.0.0.1 port=1 user=u dbname=d").unwrap();
    let pool = Pool::new("lazy", info, PoolSettings::new()).unwrap();
    assert_eq!(pool.stats(), PoolStats::default());
    assert_eq!(pool.name(), "lazy");
}
