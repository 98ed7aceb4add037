//! [`HistoricalModel`]: a read-only copy of a model that plays through its past versions,
//! fetched from the server a page at a time. The moving is `concord_sync::history`'s
//! cursor; this only carries its page requests to the server through the domain's task.
//!
//! Reads are synchronous ([`HistoricalElement`]): the copy lives here, not in the domain's
//! task, and nothing else changes it.

use concord_ot::{Document, ElementId, Kind, PathSegment, ValueData};
use concord_protocol::{
    CollectionId, HistoryInfo, HistoryOperation, HistoryPage, HistoryStart, ModelId,
    ServerResponse, Timestamp,
};
use concord_sync::history::HistoryCursor;
use concord_sync::host::HistoryQuery;

use crate::domain::Domain;
use crate::driver::Command;
use crate::error::ClientError;
use crate::model::expect;

/// Operations asked for per page: the most a historical model holds without having
/// applied them.
const PAGE_OPERATIONS: u32 = 256;
/// Bytes of operations asked for per page (the server may send less).
const PAGE_BYTES: u32 = 1024 * 1024;

/// A model at one version of its history; move it with [`play_to`](Self::play_to),
/// [`forward`](Self::forward), [`backward`](Self::backward) or
/// [`play_to_time`](Self::play_to_time). Needs read permission, and the connection.
#[derive(Debug)]
pub struct HistoricalModel {
    domain: Domain,
    cursor: HistoryCursor,
}

impl HistoricalModel {
    /// The history of `id`, at its newest version.
    pub(crate) async fn open(domain: Domain, id: &ModelId) -> Result<HistoricalModel, ClientError> {
        let info = match call(&domain, id, HistoryQuery::Open).await? {
            ServerResponse::HistoryOpened(info) => info,
            other => return Err(unexpected(&other)),
        };
        let max = info.max_version;
        let mut model =
            HistoricalModel { domain, cursor: HistoryCursor::new(info, PAGE_OPERATIONS as usize) };
        model.play_to(max).await?;
        Ok(model)
    }

    pub fn id(&self) -> &ModelId {
        &self.cursor.info().model
    }

    pub fn collection(&self) -> &CollectionId {
        &self.cursor.info().collection
    }

    pub fn created_at(&self) -> Timestamp {
        self.cursor.info().created_at
    }

    /// The version shown.
    pub fn version(&self) -> u64 {
        self.cursor.version()
    }

    /// The oldest version the server can show.
    pub fn min_version(&self) -> u64 {
        self.cursor.min_version()
    }

    /// The newest version known; it grows when pages show the model was edited since.
    pub fn max_version(&self) -> u64 {
        self.cursor.max_version()
    }

    /// When the version shown was committed.
    pub fn modified_at(&self) -> Timestamp {
        self.cursor.modified_at()
    }

    /// What the history spans, as the server told it when opened.
    pub fn info(&self) -> &HistoryInfo {
        self.cursor.info()
    }

    /// The operation that made the version shown — its session, time and user (`None`
    /// for operations the server stored before it recorded users); `None` at the oldest
    /// version.
    pub fn operation(&self) -> Option<&HistoryOperation> {
        self.cursor.operation()
    }

    /// Shows `version`.
    pub async fn play_to(&mut self, version: u64) -> Result<(), ClientError> {
        while let Some(fetch) = self.cursor.seek(version)? {
            let query = HistoryQuery::Fetch {
                start: fetch.start,
                checkpoint: fetch.checkpoint,
                max_operations: PAGE_OPERATIONS,
                max_bytes: PAGE_BYTES,
            };
            let page = self.fetch(query).await?;
            self.cursor.take_page(page)?;
        }
        Ok(())
    }

    /// Moves `n` versions on.
    pub async fn forward(&mut self, n: u64) -> Result<(), ClientError> {
        self.play_to(self.version().saturating_add(n)).await
    }

    /// Moves `n` versions back.
    pub async fn backward(&mut self, n: u64) -> Result<(), ClientError> {
        let Some(target) = self.version().checked_sub(n) else {
            let (min, max) = (self.min_version(), self.max_version());
            let version = 0;
            return Err(
                concord_sync::history::HistoryError::OutOfRange { version, min, max }.into()
            );
        };
        self.play_to(target).await
    }

    /// The last version committed at or before `time` (ms since the Unix epoch; the oldest
    /// version if none was).
    pub async fn version_at_time(&self, time: Timestamp) -> Result<u64, ClientError> {
        let query = HistoryQuery::Fetch {
            start: HistoryStart::Time(time),
            checkpoint: false,
            max_operations: 0,
            max_bytes: 0,
        };
        Ok(self.fetch(query).await?.start_version)
    }

    /// Shows the version current at `time`.
    pub async fn play_to_time(&mut self, time: Timestamp) -> Result<(), ClientError> {
        let version = self.version_at_time(time).await?;
        self.play_to(version).await
    }

    async fn fetch(&self, query: HistoryQuery) -> Result<HistoryPage, ClientError> {
        match call(&self.domain, self.id(), query).await? {
            ServerResponse::HistoryPage(page) => Ok(page),
            other => Err(unexpected(&other)),
        }
    }

    /// The model at the version shown.
    pub fn document(&self) -> &Document {
        self.cursor.document().expect("a historical model is at a version once opened")
    }

    /// The whole model as JSON (dates as `{"$date": ms}`).
    pub fn value(&self) -> serde_json::Value {
        self.document().to_json()
    }

    pub fn root(&self) -> HistoricalElement<'_> {
        let document = self.document();
        HistoricalElement { document, id: document.root_id() }
    }

    /// The element at `path` in the version shown.
    pub fn element_at(&self, path: &[PathSegment]) -> Option<HistoricalElement<'_>> {
        let document = self.document();
        document.element_at(path).map(|id| HistoricalElement { document, id })
    }

    /// The element `id`, if it exists in the version shown (ids stay the same across
    /// versions).
    pub fn element(&self, id: ElementId) -> Option<HistoricalElement<'_>> {
        let document = self.document();
        document.contains(id).then_some(HistoricalElement { document, id })
    }
}

async fn call(
    domain: &Domain,
    model: &ModelId,
    query: HistoryQuery,
) -> Result<ServerResponse, ClientError> {
    let model = model.clone();
    domain.call(|reply| Command::History { model, query, reply }).await
}

fn unexpected(response: &ServerResponse) -> ClientError {
    ClientError::InvalidValue(format!("the server answered a history request with {response:?}"))
}

/// An element of a [`HistoricalModel`] at the version shown: the typed reads of a live
/// model's elements, synchronous.
#[derive(Debug, Clone, Copy)]
pub struct HistoricalElement<'a> {
    document: &'a Document,
    id: ElementId,
}

impl<'a> HistoricalElement<'a> {
    pub fn id(&self) -> ElementId {
        self.id
    }

    pub fn kind(&self) -> Kind {
        self.document.kind(self.id).expect("a historical element exists in its version")
    }

    /// The element as JSON.
    pub fn json(&self) -> serde_json::Value {
        self.document.value(self.id).map_or(serde_json::Value::Null, |v| v.to_json())
    }

    /// An object's property.
    pub fn get(&self, key: &str) -> Result<Option<HistoricalElement<'a>>, ClientError> {
        expect(self.document, self.id, Kind::Object)?;
        let entries = self.document.object_entries(self.id).ok_or(ClientError::NoSuchElement)?;
        Ok(entries.get(key).map(|id| HistoricalElement { document: self.document, id: *id }))
    }

    /// An object's keys, in order.
    pub fn keys(&self) -> Result<Vec<String>, ClientError> {
        expect(self.document, self.id, Kind::Object)?;
        let entries = self.document.object_entries(self.id).ok_or(ClientError::NoSuchElement)?;
        Ok(entries.keys().cloned().collect())
    }

    /// An array's item.
    pub fn item(&self, index: usize) -> Result<Option<HistoricalElement<'a>>, ClientError> {
        expect(self.document, self.id, Kind::Array)?;
        let items = self.document.array_items(self.id).ok_or(ClientError::NoSuchElement)?;
        Ok(items.get(index).map(|id| HistoricalElement { document: self.document, id: *id }))
    }

    /// An array's length, or a string's in chars.
    pub fn len(&self) -> Result<usize, ClientError> {
        match self.kind() {
            Kind::Array => self.document.array_len(self.id).ok_or(ClientError::NoSuchElement),
            _ => {
                expect(self.document, self.id, Kind::String)?;
                self.document.text_len(self.id).ok_or(ClientError::NoSuchElement)
            }
        }
    }

    pub fn is_empty(&self) -> Result<bool, ClientError> {
        self.len().map(|len| len == 0)
    }

    pub fn string(&self) -> Result<String, ClientError> {
        expect(self.document, self.id, Kind::String)?;
        self.document.text(self.id).ok_or(ClientError::NoSuchElement)
    }

    pub fn number(&self) -> Result<f64, ClientError> {
        match self.scalar(Kind::Number)? {
            ValueData::Number(n) => Ok(n),
            _ => Err(ClientError::NoSuchElement),
        }
    }

    pub fn boolean(&self) -> Result<bool, ClientError> {
        match self.scalar(Kind::Boolean)? {
            ValueData::Boolean(b) => Ok(b),
            _ => Err(ClientError::NoSuchElement),
        }
    }

    /// A date, in ms since the Unix epoch.
    pub fn date(&self) -> Result<i64, ClientError> {
        match self.scalar(Kind::Date)? {
            ValueData::Date(ms) => Ok(ms),
            _ => Err(ClientError::NoSuchElement),
        }
    }

    fn scalar(&self, kind: Kind) -> Result<ValueData, ClientError> {
        expect(self.document, self.id, kind)?;
        self.document.value(self.id).map(|v| v.data).ok_or(ClientError::NoSuchElement)
    }
}
