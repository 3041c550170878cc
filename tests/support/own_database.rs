//! A database of its own in a shared cluster, for a test whose service should see only its
//! own rows: the `forkpool` schema, its notifications and the tables the test creates.

use super::{Cluster, ServiceOptions, APP_DATABASE, APP_USER};

impl Cluster {
    /// Creates database `name` (dropped first if a run before left it), owned by the app role,
    /// and returns a superuser connection to it.
    pub fn create_database(&self, name: &str) -> postgres::Client {
        let mut admin = self.superuser_in("postgres");
        for sql in [
            format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"),
            format!("CREATE DATABASE \"{name}\" OWNER {APP_USER}"),
        ] {
            admin
                .batch_execute(&sql)
                .unwrap_or_else(|e| panic!("{sql}: {}", super::describe(&e)));
        }
        self.superuser_in(name)
    }
}

impl ServiceOptions {
    /// `[databases.main]` in database `name` instead of the app database.
    pub fn in_database(mut self, name: &str) -> Self {
        let app = format!("dbname={APP_DATABASE} ");
        assert!(self.database_url.contains(&app), "{}", self.database_url);
        self.database_url = self.database_url.replace(&app, &format!("dbname={name} "));
        self
    }
}

impl Cluster {
    /// A pool of `size` TLS sessions (sslmode=require) as the app role in database `name`.
    pub fn app_pool(&self, name: &str, size: usize) -> forkpool::pool::Pool {
        use forkpool::pool::{ConnInfo, Pool, PoolSettings};
        let url = self
            .tcp_url("require")
            .replace(&format!("dbname={APP_DATABASE}"), &format!("dbname={name}"));
        Pool::new(
            name,
            ConnInfo::parse(&url).unwrap(),
            PoolSettings::new().pool_size(size),
        )
        .unwrap()
    }
}
