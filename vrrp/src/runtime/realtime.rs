//! Real-time scheduling of the election thread (`rt_priority`), so a
//! saturated machine cannot delay adverts into a false failover. See
//! `docs/election.md`, "The election thread".

/// Puts the calling thread (the election's) under SCHED_RR at `priority`,
/// as keepalived's `vrrp_rt_priority` does for its VRRP process: on a
/// machine whose cores the proxy, the apps and the load fill, a thread at
/// normal priority can wake late, and a master's adverts that arrive later
/// than the backups' Master_Down_Interval are a false failover. The thread
/// sleeps between adverts and each wake-up is a few microseconds of work,
/// so it takes next to nothing from the proxy; the kernel's RT throttling
/// (`sched_rt_runtime_us`, 95 % by default) bounds a runaway.
///
/// `SCHED_RESET_ON_FORK`: what this thread starts (Tokio's blocking pool
/// for driver work, hook processes) runs at normal priority again.
/// Refused (no CAP_SYS_NICE, or an RT cgroup budget of 0): normal
/// scheduling, said once in the log.
pub(crate) fn realtime(priority: u8) {
    if priority == 0 {
        tracing::info!("election thread at normal priority (rt_priority = 0)");
        return;
    }
    debug_assert!(priority <= 99, "validated: 1..=99");
    let param = libc::sched_param {
        sched_priority: i32::from(priority.min(99)),
    };
    // SAFETY: `param` is a valid sched_param for the call's duration; pid 0
    // is the calling thread on Linux.
    let rc =
        unsafe { libc::sched_setscheduler(0, libc::SCHED_RR | libc::SCHED_RESET_ON_FORK, &param) };
    if rc == 0 {
        tracing::info!(rt_priority = priority, "election thread under SCHED_RR");
    } else {
        let e = std::io::Error::last_os_error();
        tracing::warn!(
            rt_priority = priority,
            error = %e,
            "election thread at normal priority: real-time scheduling refused (needs CAP_SYS_NICE); a saturated machine can delay adverts"
        );
    }
}
