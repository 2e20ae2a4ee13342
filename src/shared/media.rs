//! A reader's media source: recording objects with ranged GETs.
//!
//! The media layer calls [`MediaSource::open`] exactly as it would the RingCentral client: one
//! request per open, from an offset, never retried here (object_store retries a request that
//! could not be sent; the media layer's budget covers the rest). So the memory and disk tiers
//! in front of it work as for any mount: a recording read once is read from disk afterwards.
//! The key's `content_uri` (RingCentral's URL) is never used: the recording id names the object.

use bytes::Bytes;
use futures_util::StreamExt;
use std::sync::Arc;

use super::{Bucket, BucketError};
use crate::api::{BodyEnd, Priority};
use crate::media::{BoxFuture, MediaBody, MediaError, MediaSource, RecordingKey};

/// Media from the bucket. See the module docs.
pub struct BucketMedia {
    bucket: Arc<Bucket>,
}

impl BucketMedia {
    pub fn new(bucket: Arc<Bucket>) -> BucketMedia {
        BucketMedia { bucket }
    }
}

fn media_error(e: BucketError) -> MediaError {
    match e {
        BucketError::NotFound(m) => MediaError::NotAvailable(m),
        e @ BucketError::Failed { .. } => MediaError::Transient(e.to_string()),
        e @ BucketError::Invalid(_) => MediaError::Failed(e.to_string()),
    }
}

impl MediaSource for BucketMedia {
    fn open(
        &self,
        key: &RecordingKey,
        offset: u64,
        _prio: Priority,
    ) -> BoxFuture<'_, Result<Box<dyn MediaBody>, MediaError>> {
        let id = key.id.clone();
        Box::pin(async move {
            let held = self
                .bucket
                .find(&id)
                .await
                .map_err(media_error)?
                .ok_or_else(|| {
                    MediaError::NotAvailable(format!(
                        "recording {id} is not in {} (not published yet)",
                        self.bucket.url()
                    ))
                })?;
            if offset >= held.size {
                return Ok(Box::new(Body {
                    content_type: Some(held.content_type.clone()),
                    size: held.size,
                    e_tag: None,
                    stream: None,
                }) as Box<dyn MediaBody>);
            }
            let body = self
                .bucket
                .get_recording(&id, &held, offset, None)
                .await
                .map_err(media_error)?;
            Ok(Box::new(Body {
                content_type: Some(body.content_type),
                size: body.size,
                e_tag: body.e_tag,
                stream: Some(body.stream),
            }) as Box<dyn MediaBody>)
        })
    }
}

struct Body {
    content_type: Option<String>,
    size: u64,
    e_tag: Option<String>,
    /// `None`: at or past the end.
    stream: Option<futures_util::stream::BoxStream<'static, object_store::Result<Bytes>>>,
}

impl MediaBody for Body {
    fn content_type(&self) -> Option<&str> {
        self.content_type.as_deref()
    }
    fn total_len(&self) -> Option<u64> {
        Some(self.size)
    }
    fn end(&self) -> BodyEnd {
        BodyEnd::Content
    }
    fn validator(&self) -> Option<&str> {
        self.e_tag.as_deref()
    }
    fn next_chunk(&mut self) -> BoxFuture<'_, Result<Option<Bytes>, MediaError>> {
        Box::pin(async move {
            let Some(s) = self.stream.as_mut() else {
                return Ok(None);
            };
            match s.next().await {
                None => Ok(None),
                Some(Ok(b)) => Ok(Some(b)),
                Some(Err(e)) => Err(MediaError::Transient(format!(
                    "reading from the bucket: {}",
                    crate::api::chain(&e)
                ))),
            }
        })
    }
}
