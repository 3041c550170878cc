//! The keys of `[databases.NAME]`, each applied to a [`DatabaseConfig`] (the loader's
//! `databases.NAME.KEY` arm).

use figment::value::Value;

use super::load::{closest, Fault};
use super::values;
use super::DatabaseConfig;

pub(super) const DATABASE_KEYS: &[&str] = &[
    "url",
    "password_file",
    "pool_size",
    "min_idle",
    "checkout_timeout",
    "connect_timeout",
    "pre_ping",
    "ping_after",
    "max_lifetime",
    "lifetime_jitter",
    "idle_timeout",
    "reset_on_return",
    "leak_threshold",
    "statement_timeout",
    "application_name",
    "max_connections_budget",
];

pub(super) fn set_database(d: &mut DatabaseConfig, key: &str, v: &Value) -> Result<(), Fault> {
    match key {
        "url" => d.url = values::text(v)?,
        "password_file" => d.password_file = values::optional_path(v)?,
        "pool_size" => d.pool_size = values::whole_number(v)?,
        "min_idle" => d.min_idle = values::whole_number(v)?,
        "checkout_timeout" => d.checkout_timeout = values::duration(v)?,
        "connect_timeout" => d.connect_timeout = values::duration(v)?,
        "pre_ping" => d.pre_ping = values::boolean(v)?,
        "ping_after" => d.ping_after = values::duration(v)?,
        "max_lifetime" => d.max_lifetime = values::optional_duration(v)?,
        "lifetime_jitter" => d.lifetime_jitter = values::duration(v)?,
        "idle_timeout" => d.idle_timeout = values::optional_duration(v)?,
        "reset_on_return" => d.reset_on_return = values::reset_on_return(v)?,
        "leak_threshold" => d.leak_threshold = values::optional_duration(v)?,
        "statement_timeout" => d.statement_timeout = values::optional_duration(v)?,
        "application_name" => d.application_name = values::text(v)?,
        "max_connections_budget" => d.max_connections_budget = values::whole_number(v)?,
        _ => return Err(Fault::Unknown(closest(key, DATABASE_KEYS))),
    }
    Ok(())
}
