//! A striped pipe's upkeep: silent stripes, outages with no stripe left,
//! the debug statistics and the release of idle buffers.

use std::time::{Duration, Instant};

use log::{debug, info, warn};
use striper_core::{ErrorKind, PipeError};

use super::{Role, StripedPipe};

impl StripedPipe {
    /// Keepalive: stripes silent past the timeout are dropped.
    pub(super) fn check_silence(&mut self, now: Instant) {
        while let Some(i) = self.session.handle_timeout(now) {
            let timeout = self.cfg.session.stripe_timeout.as_secs_f64();
            let e = PipeError::new(
                ErrorKind::Timeout,
                format!("nothing heard on it for {timeout:.0} s"),
            );
            if self.stripes[i].is_some() {
                self.lose_stripe(i, e, now);
            } else {
                self.session.stripe_down(i);
            }
        }
    }

    /// Fails the session when no stripe is left and none can come back;
    /// tracks outages otherwise.
    pub(super) fn check_alive(&mut self, now: Instant) -> Result<(), PipeError> {
        if self.session.stripes_up() > 0 {
            if let Some(since) = self.orphaned_since.take() {
                self.session.stats_mut().outages_survived += 1;
                info!(
                    "{}: resumed after {:.1} s without any stripe",
                    self.label,
                    now.saturating_duration_since(since).as_secs_f64()
                );
            }
            return Ok(());
        }
        if !self.established {
            // Nothing to resume: wait only for the first stripes in progress.
            if self.stripes.iter().any(|s| s.is_some()) {
                return Ok(());
            }
            return Err(self.fail(self.unreachable_error()));
        }
        let resume = self.cfg.resume_timeout;
        let since = match self.orphaned_since {
            Some(t) => t,
            None if resume.is_zero() => return Err(self.fail(self.all_lost_error())),
            None => {
                warn!(
                    "{}: every stripe is gone; keeping the session for {:.0} s{}",
                    self.label,
                    resume.as_secs_f64(),
                    if matches!(self.role, Role::Client { .. }) {
                        " while re-dialing"
                    } else {
                        " for the client to come back"
                    }
                );
                self.orphaned_since = Some(now);
                now
            }
        };
        if now.saturating_duration_since(since) >= resume {
            let last = self
                .last_stripe_error
                .as_ref()
                .map_or(String::new(), |e| format!(" (last: {e})"));
            return Err(self.fail(PipeError::new(
                ErrorKind::Timeout,
                format!(
                    "no stripe came back within {:.0} s{last}",
                    resume.as_secs_f64()
                ),
            )));
        }
        Ok(())
    }

    pub(super) fn all_lost_error(&self) -> PipeError {
        match &self.last_stripe_error {
            Some(last) => PipeError::new(
                last.kind,
                format!("all {} stripes lost (last: {last})", self.stripes.len()),
            ),
            None => PipeError::new(ErrorKind::Reset, "all stripes lost"),
        }
    }

    /// Once a second at debug level: where the session's bytes are.
    pub(super) fn log_stats(&mut self, now: Instant) {
        if !log::log_enabled!(log::Level::Debug)
            || self
                .last_stats
                .is_some_and(|t| now.duration_since(t) < Duration::from_secs(1))
        {
            return;
        }
        self.last_stats = Some(now);
        let s = &self.session;
        debug!(
            "{}: in {} KiB / out {} KiB; unacked {} KiB (unsent {} KiB), reassembly {} KiB",
            self.label,
            s.stats().bytes_in >> 10,
            s.stats().bytes_out >> 10,
            s.send_backlog() >> 10,
            s.unsent() >> 10,
            s.recv_backlog() >> 10,
        );
        for (i, st) in self.stripes.iter().enumerate() {
            let limit = st.as_ref().map_or(0, |st| st.unsent_limit() >> 10);
            debug!(
                "{}:   {}: {}, unsent limit {limit} KiB",
                self.label,
                self.paths.name_stripe(i),
                s.describe_stripe(i)
            );
        }
    }

    pub(super) fn release_if_idle(&mut self, now: Instant) {
        let last = *self.last_activity.get_or_insert(now);
        if now.duration_since(last) >= self.cfg.idle_release {
            let held = self.session.buffer_capacity();
            if held > 0 {
                striper_core::mem::note_freed(held);
            }
            self.session.release_idle_buffers();
            for s in self.stripes.iter_mut().flatten() {
                s.release_idle();
            }
        }
    }
}
