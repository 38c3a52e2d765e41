//! `dynia_tls_certificate_expiry_seconds{name}`, computed at scrape time so
//! it counts down without anyone updating it.

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{GaugeVec, Opts};

use super::unix_now;

/// `dynia_tls_certificate_expiry_seconds`, computed when scraped so the
/// value counts down without anyone updating it.
pub(super) struct ExpiryCollector {
    desc: Desc,
    certs: Arc<ArcSwap<Vec<(String, i64)>>>,
}

const EXPIRY_NAME: &str = "dynia_tls_certificate_expiry_seconds";
const EXPIRY_HELP: &str =
    "Seconds until the certificate's notAfter; name is <listener>:<certificate file>.";

impl ExpiryCollector {
    pub(super) fn new(certs: Arc<ArcSwap<Vec<(String, i64)>>>) -> Result<Self, prometheus::Error> {
        let desc = Desc::new(
            EXPIRY_NAME.into(),
            EXPIRY_HELP.into(),
            vec!["name".into()],
            HashMap::new(),
        )?;
        Ok(ExpiryCollector { desc, certs })
    }
}

impl Collector for ExpiryCollector {
    fn desc(&self) -> Vec<&Desc> {
        vec![&self.desc]
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let certs = self.certs.load();
        if certs.is_empty() {
            return Vec::new();
        }
        let Ok(g) = GaugeVec::new(Opts::new(EXPIRY_NAME, EXPIRY_HELP), &["name"]) else {
            return Vec::new();
        };
        let now = unix_now();
        for (name, not_after) in certs.iter() {
            g.with_label_values(&[name.as_str()])
                .set((not_after - now) as f64);
        }
        g.collect()
    }
}
