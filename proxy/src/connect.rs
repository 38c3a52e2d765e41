//! The connects of one request: a pooled connection if one is fit, else a
//! race of connects to members in turn, a second one started when the first
//! is slow (`hedge`), each in a task of its own so an abandoned connect is
//! still judged. What the request may still try is in [`Tries`].
//! docs/proxy.md, "Hedged connects".

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use crate::access::record::{Hook, Record};
use crate::backend::{Backend, Upstream};
use crate::config::MAX_RETRIES;
use crate::hedge::hedge_delay;
use crate::state::{ServiceRt, Tried};

/// How a request's connections are made: a tunnel needs a new connection of
/// its own, anything else may take a pooled one idle for less than `max_idle`.
#[derive(Clone, Copy)]
pub(crate) struct Dial {
    pub(crate) timeout: Duration,
    pub(crate) upgrades: bool,
    pub(crate) max_idle: Duration,
}

/// Why the next member is tried, for the retry counters.
#[derive(Clone, Copy)]
pub(crate) enum Retry {
    /// The previous member's connection could not be had or was lost unsent.
    Connect,
    /// The previous member closed or reset before any response byte.
    Reset,
    /// A connect still pending was slow (see `hedge`).
    Hedge,
    /// The election lost the member while the answer was awaited.
    Lost,
}

/// The members one request has tried and may still try.
pub(crate) struct Tries {
    pub(crate) tried: Tried,
    /// Members still allowed: 1 + the service's retries, minus those tried.
    pub(crate) left: u32,
    pub(crate) made: u32,
    /// Why the next member would be tried after a failure.
    pub(crate) why: Retry,
}

impl Tries {
    pub(crate) fn new(allowed: u32) -> Tries {
        Tries {
            tried: Tried::default(),
            left: allowed,
            made: 0,
            why: Retry::Connect,
        }
    }

    /// The next member to try, counted as a retry when it is not the first.
    pub(crate) fn next<'s>(
        &mut self,
        svc: &'s ServiceRt,
        why: Retry,
        rec: &mut Option<Box<Record>>,
    ) -> Option<&'s Arc<Backend>> {
        if self.left == 0 {
            return None;
        }
        let (i, backend) = svc.pick(self.tried)?;
        self.tried.add(i);
        self.left -= 1;
        let retry = self.made > 0;
        if retry {
            let r = &svc.metrics.retries;
            match why {
                Retry::Connect => r.connect.inc(),
                Retry::Reset => r.reset.inc(),
                Retry::Hedge => r.hedge.inc(),
                Retry::Lost => r.lost.inc(),
            }
        }
        self.made += 1;
        self.why = Retry::Connect;
        rec.trying(&backend.member, retry);
        Some(backend)
    }

    pub(crate) fn can_hedge(&self, svc: &ServiceRt) -> bool {
        self.left > 0 && svc.has_untried(self.tried)
    }
}

/// A ready connection and the member it goes to; `reused` tells a pooled one.
pub(crate) struct Connected {
    pub(crate) backend: Arc<Backend>,
    pub(crate) up: Upstream,
    pub(crate) reused: bool,
}

/// What a connect task reports: its member and the connection if it got one.
type Raced = (Arc<Backend>, Option<Upstream>);

/// Connects running for one request at most: one per member it may try.
pub(crate) const RACE_MAX: usize = 1 + MAX_RETRIES as usize;

/// A connection to the first of the request's next members that has one: a
/// pooled one at once, else new connects, with another member's started
/// alongside one that is slow (`hedge::hedge_delay`); a failed connect makes
/// way for the next member at once. Connects still pending when this returns
/// or is dropped finish on their own (`spawn_connect`). `None` when no member
/// is left to try.
pub(crate) async fn connect_any(
    svc: &ServiceRt,
    tries: &mut Tries,
    dial: Dial,
    rec: &mut Option<Box<Record>>,
) -> Option<Connected> {
    let mut race = Race::new(dial);
    let mut hedge_at: Option<(tokio::time::Instant, Arc<Backend>)> = None;
    let mut launch = true;
    loop {
        if std::mem::take(&mut launch) {
            let why = if race.running > 0 {
                Retry::Hedge
            } else {
                tries.why
            };
            if let Some(backend) = tries.next(svc, why, rec) {
                let pooled = match dial.upgrades {
                    true => None,
                    false => backend.pooled(dial.max_idle).await,
                };
                if let Some(up) = pooled {
                    let backend = backend.clone();
                    return Some(Connected {
                        backend,
                        up,
                        reused: true,
                    });
                }
                race.start(backend.clone());
                let ewma = backend.connect_ewma.get();
                hedge_at = hedge_delay(ewma, dial.timeout, tries.can_hedge(svc))
                    .map(|d| (tokio::time::Instant::now() + d, backend.clone()));
            }
        }
        if race.running == 0 {
            return None;
        }
        let at = hedge_at
            .as_ref()
            .map_or_else(tokio::time::Instant::now, |(at, _)| *at);
        tokio::select! {
            (backend, up) = race.next() => match up {
                Some(up) => return Some(Connected { backend, up, reused: false }),
                None => launch = true, // judged by its task
            },
            () = tokio::time::sleep_until(at), if hedge_at.is_some() => {
                // A connect this slow is suspect: its checks look at once.
                if let Some((_, slow)) = hedge_at.take() {
                    slow.suspect();
                }
                launch = true;
                tracing::debug!(service = %svc.name, "connect slow, trying another member alongside");
            }
        }
    }
}

/// The connects running for one request. The channel they report on is made
/// with the first; when the race is dropped (won, or the request dropped),
/// connections reported but not read, and those of connects still running
/// (their report fails), are given back.
pub(crate) struct Race {
    pub(crate) dial: Dial,
    pub(crate) chan: Option<(mpsc::Sender<Raced>, mpsc::Receiver<Raced>)>,
    pub(crate) running: usize,
}

impl Race {
    pub(crate) fn new(dial: Dial) -> Race {
        Race {
            dial,
            chan: None,
            running: 0,
        }
    }

    pub(crate) fn start(&mut self, backend: Arc<Backend>) {
        let (tx, _) = self.chan.get_or_insert_with(|| mpsc::channel(RACE_MAX));
        spawn_connect(backend, self.dial, tx.clone());
        self.running += 1;
    }

    /// The next connect to end; only while one runs. Cancel-safe.
    pub(crate) async fn next(&mut self) -> Raced {
        let Some((_, rx)) = &mut self.chan else {
            unreachable!("a race without a connect");
        };
        // Never `None`: the sender is held here.
        let got = rx.recv().await.expect("a race holds its sender");
        self.running -= 1;
        got
    }
}

impl Drop for Race {
    fn drop(&mut self) {
        if let Some((_, rx)) = &mut self.chan {
            rx.close();
            while let Ok((backend, up)) = rx.try_recv() {
                give_back(&backend, up, self.dial);
            }
        }
    }
}

/// Connects to `backend` in a task of its own, so that a connect nobody waits
/// for any more (another member's won, or the client left and the request's
/// future was dropped) still finishes within `dial.timeout` and is judged: a
/// failure is a passive failure whoever waits for it, and a late connection
/// goes to the pool (a tunnel's is closed).
pub(crate) fn spawn_connect(backend: Arc<Backend>, dial: Dial, tx: mpsc::Sender<Raced>) {
    tokio::spawn(async move {
        let up = match backend.connect(dial.timeout, dial.upgrades).await {
            Ok(up) => Some(up),
            Err(e) => {
                tracing::debug!(service = %backend.service, member = %backend.member, error = %e, "upstream connect failed");
                if !e.is_local() {
                    backend.passive_failure();
                }
                None
            }
        };
        if let Err(unread) = tx.try_send((backend, up)) {
            let (backend, up) = unread.into_inner();
            give_back(&backend, up, dial);
        }
    });
}

/// A connection no request wants: to the pool, or closed if it was made for a tunnel.
pub(crate) fn give_back(backend: &Backend, up: Option<Upstream>, dial: Dial) {
    if let (Some(up), false) = (up, dial.upgrades) {
        backend.pool.put(up);
    }
}
