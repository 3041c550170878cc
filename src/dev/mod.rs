//! `forkpool dev`.
