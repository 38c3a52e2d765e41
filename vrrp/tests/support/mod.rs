//! Helpers shared by the vrrp tests.
#![allow(dead_code)]

pub mod rng;
