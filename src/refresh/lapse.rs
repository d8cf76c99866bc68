//! Verify before lapse: a level set to renew that reaches its `expires_at` with no
//! newer event ends, as the clock says; but its renewal's webhook may just have been
//! lost (Adapty stops retrying after a day). So, `--verify-before-lapse` after such an
//! end, the daemon asks Adapty about that profile once and folds the answer: a renewal
//! it missed is corrected within minutes, a true expiry stays one.
//!
//! Each end is reported once by the clock (the change feed's row is written once), so
//! each `(level, expiry)` is checked at most once. An end reported just before a stop
//! is not checked after the restart (the check lives in memory): the next refresh, a
//! sync, or the renewal's next webhook set it right.

use super::{Refreshed, Refresher, Who};
use crate::index::Index;
use crate::store::Lapse;
use crate::timestamp::Timestamp;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc::UnboundedReceiver;

/// Checks each lapse `delay` after it is reported. Runs until the channel closes.
pub async fn verify(
    refresher: Arc<Refresher>,
    index: Arc<Index>,
    delay: Duration,
    mut lapses: UnboundedReceiver<Lapse>,
) {
    while let Some(lapse) = lapses.recv().await {
        let (refresher, index) = (refresher.clone(), index.clone());
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            check(&refresher, &index, &lapse).await;
        });
    }
}

async fn check(refresher: &Refresher, index: &Index, lapse: &Lapse) {
    // A newer event since (the renewal after all, a refund) answered the question.
    if !still_lapsed(index, lapse) {
        counted("superseded");
        return;
    }
    match refresher
        .refresh(Who::Profile(&lapse.profile_id), "verify")
        .await
    {
        Ok(Refreshed::Folded { .. }) if grants_now(index, lapse) => {
            counted("corrected");
            tracing::info!(
                profile_id = &*lapse.profile_id,
                access_level_id = &*lapse.access_level_id,
                "Adapty says the level is held past its expiry: a renewal whose webhook \
                 never came; access restored"
            );
        }
        Ok(_) => counted("agreed"),
        Err(error) => {
            counted("failed");
            tracing::warn!(
                profile_id = &*lapse.profile_id,
                access_level_id = &*lapse.access_level_id,
                %error,
                "could not ask Adapty about a level that lapsed while set to renew"
            );
        }
    }
}

fn level_window(index: &Index, lapse: &Lapse) -> Option<crate::projection::AccessWindow> {
    index.with_profile(&lapse.profile_id, |known| {
        known?
            .levels
            .iter()
            .find(|l| **l.access_level_id() == *lapse.access_level_id)
            .map(|l| l.window())
    })
}

fn still_lapsed(index: &Index, lapse: &Lapse) -> bool {
    level_window(index, lapse)
        .is_some_and(|w| !w.grants_at(Timestamp::now()) && w.expires_at == lapse.expires_at)
}

fn grants_now(index: &Index, lapse: &Lapse) -> bool {
    level_window(index, lapse).is_some_and(|w| w.grants_at(Timestamp::now()))
}

fn counted(result: &'static str) {
    metrics::counter!("entitled_lapse_checks_total", "result" => result).increment(1);
}
