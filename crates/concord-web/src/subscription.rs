//! Event subscriptions: `onEvent(callback)` returns a function that ends the subscription
//! (idempotent). Until then the callback gets every event, in order; once it is called, the
//! subscription's task ends at once, without waiting for another event.

use std::cell::RefCell;
use std::future::Future;
use std::pin::{Pin, pin};
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use futures_util::future::{Either, select};
use futures_util::{Stream, StreamExt};
use wasm_bindgen::JsCast;
use wasm_bindgen::prelude::*;

/// Completes once `stop` is called on one of its clones.
#[derive(Debug, Clone, Default)]
struct Stop {
    state: Rc<RefCell<(bool, Option<Waker>)>>,
}

impl Stop {
    fn stop(&self) {
        let mut state = self.state.borrow_mut();
        state.0 = true;
        if let Some(waker) = state.1.take() {
            waker.wake();
        }
    }
}

impl Future for Stop {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut state = self.state.borrow_mut();
        if state.0 {
            Poll::Ready(())
        } else {
            state.1 = Some(cx.waker().clone());
            Poll::Pending
        }
    }
}

/// Calls `callback` with each item of `events` until the returned function is called.
pub(crate) fn subscribe(
    events: impl Stream<Item = JsValue> + 'static,
    callback: js_sys::Function,
) -> js_sys::Function {
    let stop = Stop::default();
    let stopped = stop.clone();
    wasm_bindgen_futures::spawn_local(async move {
        let mut events = pin!(events);
        // Ends when the events end or the subscription is stopped.
        while let Either::Left((Some(event), _)) = select(events.next(), stopped.clone()).await {
            // A callback that throws does not end the subscription.
            let _ = callback.call1(&JsValue::NULL, &event);
        }
    });
    Closure::<dyn FnMut()>::new(move || stop.stop()).into_js_value().unchecked_into()
}

/// Where a subscription's items come from: the client's event streams.
pub(crate) trait EventSource: 'static {
    type Item: 'static;
    fn next_item(&mut self) -> impl Future<Output = Option<Self::Item>> + '_;
}

impl<T: Clone + 'static> EventSource for concord_client::Events<T> {
    type Item = T;
    fn next_item(&mut self) -> impl Future<Output = Option<T>> + '_ {
        self.next()
    }
}

impl EventSource for concord_client::ElementEvents {
    type Item = concord_client::ElementChange;
    fn next_item(&mut self) -> impl Future<Output = Option<Self::Item>> + '_ {
        self.next()
    }
}

/// `source`'s items, each turned into its JS value by `convert` (items it gives no value
/// for are skipped).
pub(crate) fn converted<S, F, Fut>(source: S, convert: F) -> impl Stream<Item = JsValue>
where
    S: EventSource,
    F: Fn(S::Item) -> Fut + 'static,
    Fut: Future<Output = Option<JsValue>>,
{
    futures_util::stream::unfold((source, Rc::new(convert)), |(mut source, convert)| async move {
        loop {
            let item = source.next_item().await?;
            if let Some(value) = convert(item).await {
                return Some((value, (source, convert)));
            }
        }
    })
}
