//! Queues bounded in bytes, not in items.
//!
//! A queue of "64 frames" holds 64 bytes or 256 MiB depending on who fills it; a hostile
//! peer picks the second. Every queue between a socket and its consumer is therefore a
//! [`channel`] with a byte budget: a sender takes as many permits of a semaphore as its
//! item has bytes (at most the whole budget, so one item larger than the budget still
//! passes when the queue is empty), and the receiver gives them back as it takes the item
//! out. What the queue holds is then at most the budget, plus the one item its consumer
//! is working on.
//!
//! Built on tokio's unbounded mpsc and `Semaphore` rather than a crate: the two together
//! are this whole module, and both ends need blocking and async forms (the agent's PTY
//! writer is a thread).

use std::sync::Arc;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore, TryAcquireError};

/// The sending half; cheap to clone.
#[derive(Debug)]
pub struct ByteSender<T> {
    tx: mpsc::UnboundedSender<(T, OwnedSemaphorePermit)>,
    budget: Arc<Semaphore>,
    bytes: usize,
}

impl<T> Clone for ByteSender<T> {
    fn clone(&self) -> Self {
        Self {
            tx: self.tx.clone(),
            budget: self.budget.clone(),
            bytes: self.bytes,
        }
    }
}

/// The receiving half.
#[derive(Debug)]
pub struct ByteReceiver<T> {
    rx: mpsc::UnboundedReceiver<(T, OwnedSemaphorePermit)>,
}

/// Why [`ByteSender::try_send`] did not queue the item (it is handed back).
#[derive(Debug, PartialEq, Eq)]
pub enum TrySendError<T> {
    /// The queue holds its budget already.
    Full(T),
    /// The receiver is gone.
    Closed(T),
}

/// A queue that holds at most `budget_bytes` (plus the item being consumed).
///
/// # Panics
/// A budget of 0 or over `u32::MAX` bytes (a caller bug: budgets are constants).
pub fn channel<T>(budget_bytes: usize) -> (ByteSender<T>, ByteReceiver<T>) {
    assert!(
        budget_bytes > 0 && u32::try_from(budget_bytes).is_ok(),
        "byte budget out of range"
    );
    let (tx, rx) = mpsc::unbounded_channel();
    (
        ByteSender {
            tx,
            budget: Arc::new(Semaphore::new(budget_bytes)),
            bytes: budget_bytes,
        },
        ByteReceiver { rx },
    )
}

impl<T> ByteSender<T> {
    fn permits(&self, len: usize) -> u32 {
        // An item counts for at least one byte (so empty items are bounded too) and at
        // most the whole budget (so any item can pass an empty queue).
        u32::try_from(len.clamp(1, self.bytes)).unwrap_or(u32::MAX)
    }

    /// Queues `item` of `len` bytes, waiting for room.
    ///
    /// # Errors
    /// The receiver is gone; the item is handed back.
    pub async fn send(&self, item: T, len: usize) -> Result<(), T> {
        let permit = match self
            .budget
            .clone()
            .acquire_many_owned(self.permits(len))
            .await
        {
            Ok(p) => p,
            Err(_) => return Err(item),
        };
        self.tx.send((item, permit)).map_err(|e| e.0 .0)
    }

    /// Queues `item` of `len` bytes if there is room now.
    ///
    /// # Errors
    /// No room, or the receiver is gone; the item is handed back.
    pub fn try_send(&self, item: T, len: usize) -> Result<(), TrySendError<T>> {
        if self.tx.is_closed() {
            return Err(TrySendError::Closed(item));
        }
        match self
            .budget
            .clone()
            .try_acquire_many_owned(self.permits(len))
        {
            Ok(permit) => self
                .tx
                .send((item, permit))
                .map_err(|e| TrySendError::Closed(e.0 .0)),
            Err(TryAcquireError::NoPermits) => Err(TrySendError::Full(item)),
            Err(TryAcquireError::Closed) => Err(TrySendError::Closed(item)),
        }
    }

    /// Whether an item of `len` bytes would be queued now.
    pub fn has_room(&self, len: usize) -> bool {
        self.budget.available_permits() >= self.permits(len) as usize
    }

    /// Bytes free in the budget.
    pub fn room(&self) -> usize {
        self.budget.available_permits()
    }

    /// The receiver is gone.
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }
}

impl<T> ByteReceiver<T> {
    /// The next item (its bytes leave the budget now).
    pub async fn recv(&mut self) -> Option<T> {
        self.rx.recv().await.map(|(item, _permit)| item)
    }

    /// The next item, from a thread outside the runtime.
    pub fn blocking_recv(&mut self) -> Option<T> {
        self.rx.blocking_recv().map(|(item, _permit)| item)
    }

    /// The next item if one is queued.
    pub fn try_recv(&mut self) -> Option<T> {
        self.rx.try_recv().ok().map(|(item, _permit)| item)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_budget_is_in_bytes_and_one_big_item_passes_an_empty_queue() {
        let (tx, mut rx) = channel::<Vec<u8>>(1000);
        tx.try_send(vec![0; 600], 600).unwrap();
        assert!(!tx.has_room(600));
        assert_eq!(
            tx.try_send(vec![1; 600], 600),
            Err(TrySendError::Full(vec![1; 600]))
        );
        // 100 small items fit where 2 big ones do not.
        for _ in 0..100 {
            tx.try_send(vec![2; 4], 4).unwrap();
        }
        assert_eq!(tx.room(), 0);
        assert!(matches!(tx.try_send(vec![], 0), Err(TrySendError::Full(_))));
        assert_eq!(rx.recv().await.unwrap().len(), 600);
        assert_eq!(tx.room(), 600);
        while rx.try_recv().is_some() {}
        // An item larger than the whole budget takes all of it, and passes alone.
        tx.try_send(vec![3; 5000], 5000).unwrap();
        assert!(matches!(
            tx.try_send(vec![4], 1),
            Err(TrySendError::Full(_))
        ));
        let waiter = {
            let tx = tx.clone();
            tokio::spawn(async move { tx.send(vec![5; 10], 10).await })
        };
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished(), "send waits for room");
        assert_eq!(rx.recv().await.unwrap().len(), 5000);
        waiter.await.unwrap().unwrap();
        assert_eq!(rx.recv().await.unwrap(), vec![5; 10]);
        drop(rx);
        assert!(tx.is_closed());
        assert!(matches!(
            tx.try_send(vec![6], 1),
            Err(TrySendError::Closed(_))
        ));
        assert_eq!(tx.send(vec![7], 1).await, Err(vec![7]));
    }
}
