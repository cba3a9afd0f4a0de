//! The first-come-first-served queue of `gpukillctl run --wait`: bounded per user and in
//! all; a request is served only when it is first in line and its GPUs are free.

use std::sync::Arc;
use std::time::SystemTime;

use super::{
    Grant, LeaseRequest, Requester, ReservationError, Reservations, State, Ticket, clip_note,
};
use crate::store::unix_ms;

impl State {
    /// Requests ahead of queued `ticket` (of every queued one for a request not queued).
    pub(super) fn ahead_of(&self, ticket: Option<u64>) -> usize {
        match ticket {
            Some(id) => self.queue.iter().position(|t| t.id == id).unwrap_or(0),
            None => self.queue.len(),
        }
    }
}

impl Reservations {
    /// Puts a request in the queue; it is served by [`serve_ticket`](Self::serve_ticket)
    /// when it is first and its GPUs are free. Dropping the ticket leaves the queue. Refused
    /// when the requester has `max_queued_per_user` requests waiting, or everyone together
    /// `max_queued`.
    pub fn enqueue(
        self: &Arc<Self>,
        requester: &Requester,
        count: u32,
        command: &str,
    ) -> Result<Queued, ReservationError> {
        let mut state = self.lock();
        let mine = state
            .queue
            .iter()
            .filter(|t| t.uid == requester.uid)
            .count();
        if mine >= self.config.max_queued_per_user {
            return Err(ReservationError::QueueFull {
                who: format!("user {} has", requester.user),
                waiting: mine,
                setting: "[reservations] max_queued_per_user",
                limit: self.config.max_queued_per_user,
            });
        }
        if state.queue.len() >= self.config.max_queued {
            return Err(ReservationError::QueueFull {
                who: "everyone together have".to_owned(),
                waiting: state.queue.len(),
                setting: "[reservations] max_queued",
                limit: self.config.max_queued,
            });
        }
        state.next_ticket += 1;
        let ticket = Ticket {
            id: state.next_ticket,
            uid: requester.uid,
            user: requester.user.clone(),
            count,
            since_ms: unix_ms(SystemTime::now()),
            command: clip_note(command.to_owned()),
        };
        let id = ticket.id;
        state.queue.push_back(ticket);
        Ok(Queued {
            reservations: Arc::clone(self),
            id,
        })
    }

    /// Serves a queued request if it is first in line and its GPUs are free: `Ok(None)`
    /// while it waits, with how many requests are ahead.
    pub async fn serve_ticket(
        &self,
        queued: &Queued,
        requester: &Requester,
        request: &LeaseRequest,
    ) -> Result<Result<Grant, usize>, ReservationError> {
        match self.grant(requester, request, Some(queued.id))? {
            Some((grant, pending)) => self.settle(grant, pending).await.map(Ok),
            None => Ok(Err(self.lock().ahead_of(Some(queued.id)))),
        }
    }
}

/// A place in the queue; dropping it leaves the queue (the client gave up or went away).
pub struct Queued {
    reservations: Arc<Reservations>,
    id: u64,
}

impl Drop for Queued {
    fn drop(&mut self) {
        self.reservations.lock().queue.retain(|t| t.id != self.id);
        self.reservations.changed.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::super::Want;
    use super::super::tests::{request, requester, reservations};
    use super::*;
    use crate::store::LeaseKind;

    #[tokio::test]
    async fn queued_requests_are_served_first_come_first_served() {
        let reservations = reservations().await;
        let (alice, bob, carol) = (
            requester(1000, false),
            requester(2000, false),
            requester(3000, false),
        );
        let manual = |count| request(LeaseKind::Manual, Want::Count(count));
        let run = |count| request(LeaseKind::Run, Want::Count(count));
        assert!(!reservations.status().used, "nobody has reserved yet");
        reservations.reserve(&alice, &manual(3)).await.unwrap();
        assert!(reservations.status().used);
        let bob_waits = reservations.enqueue(&bob, 2, "b").unwrap();
        let carol_waits = reservations.enqueue(&carol, 1, "c").unwrap();
        // One GPU is free, but Bob is first in line: Carol waits behind him.
        let (run1, run2) = (run(1), run(2));
        let served = reservations.serve_ticket(&carol_waits, &carol, &run1);
        assert!(matches!(served.await.unwrap(), Err(1)));
        let direct = reservations.reserve(&carol, &manual(1)).await;
        assert!(
            matches!(direct, Err(ReservationError::Busy(_))),
            "{direct:?}"
        );
        let served = reservations.serve_ticket(&bob_waits, &bob, &run2);
        assert!(matches!(served.await.unwrap(), Err(0)));
        // Alice releases: Bob, then Carol.
        assert_eq!(reservations.release(&alice, &[]).await.unwrap().len(), 3);
        let bobs = reservations.serve_ticket(&bob_waits, &bob, &run2);
        let bobs = bobs.await.unwrap().unwrap();
        drop(bob_waits);
        let carols = reservations.serve_ticket(&carol_waits, &carol, &run1);
        let carols = carols.await.unwrap().unwrap();
        let mut all: Vec<u32> = bobs
            .gpus
            .iter()
            .chain(&carols.gpus)
            .map(|g| g.index)
            .collect();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), 3);
        drop(carol_waits);
        assert!(reservations.status().queue.is_empty());
    }
}
