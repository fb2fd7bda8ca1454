//! WordPiece tokenization from a `tokenizer.json` (the `tokenizers` crate, the same code as
//! Python's `tokenizers` package), with the padding done here.

use burn::tensor::{Device, Int, Tensor, TensorData};
use tokenizers::{Tokenizer, TruncationParams};

use super::TextError;

/// A model's tokenizer. The padding and truncation settings stored in `tokenizer.json` are
/// replaced: each call truncates to the length it is given and pads to the longest text of the
/// batch, as sentence-transformers does.
#[derive(Clone, Debug)]
pub struct TextTokenizer {
    inner: Tokenizer,
    pad_id: u32,
}

/// Token ids of a batch of texts, padded on the right to the longest (`[n_texts, len]`,
/// row-major).
#[derive(Clone, Debug, PartialEq)]
pub struct TokenBatch {
    /// Number of texts.
    pub n_texts: usize,
    /// Tokens per row (the longest text's, special tokens included).
    pub len: usize,
    /// Token ids, padded with the pad token.
    pub ids: Vec<u32>,
    /// Segment (token type) ids.
    pub type_ids: Vec<u32>,
    /// 1 for a real token, 0 for padding.
    pub mask: Vec<u32>,
}

impl TextTokenizer {
    /// Parses a `tokenizer.json`.
    pub fn from_bytes(bytes: &[u8]) -> Result<TextTokenizer, TextError> {
        let mut inner =
            Tokenizer::from_bytes(bytes).map_err(|e| TextError::Tokenizer(e.to_string()))?;
        let pad_id = inner
            .get_padding()
            .map(|padding| padding.pad_id)
            .or_else(|| inner.token_to_id("[PAD]"))
            .unwrap_or(0);
        inner.with_padding(None);
        Ok(TextTokenizer { inner, pad_id })
    }

    /// The ids of `text`'s tokens, with the special tokens (`[CLS] ... [SEP]`), truncated to
    /// `max_tokens`.
    pub fn ids(&self, text: &str, max_tokens: usize) -> Result<Vec<u32>, TextError> {
        Ok(self.encode(&[text], max_tokens)?.ids)
    }

    /// Tokenizes `texts` (special tokens added, each truncated to `max_tokens`, at least 2) and
    /// pads them to the longest.
    pub fn encode(&self, texts: &[&str], max_tokens: usize) -> Result<TokenBatch, TextError> {
        let mut tokenizer = self.inner.clone();
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: max_tokens.max(2),
                ..TruncationParams::default()
            }))
            .map_err(|e| TextError::Tokenizer(e.to_string()))?;
        let encodings = texts
            .iter()
            .map(|text| {
                tokenizer
                    .encode(*text, true)
                    .map_err(|e| TextError::Tokenizer(e.to_string()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let len = encodings
            .iter()
            .map(|e| e.get_ids().len())
            .max()
            .unwrap_or(0);
        let mut batch = TokenBatch {
            n_texts: texts.len(),
            len,
            ids: Vec::with_capacity(texts.len() * len),
            type_ids: Vec::with_capacity(texts.len() * len),
            mask: Vec::with_capacity(texts.len() * len),
        };
        for encoding in &encodings {
            let n = encoding.get_ids().len();
            batch.ids.extend_from_slice(encoding.get_ids());
            batch.ids.extend(std::iter::repeat_n(self.pad_id, len - n));
            batch.type_ids.extend_from_slice(encoding.get_type_ids());
            batch.type_ids.extend(std::iter::repeat_n(0, len - n));
            batch.mask.extend(std::iter::repeat_n(1, n));
            batch.mask.extend(std::iter::repeat_n(0, len - n));
        }
        Ok(batch)
    }
}

impl TokenBatch {
    /// Rows `rows` of the batch, re-padded to the longest of them.
    pub fn select(&self, rows: &[usize]) -> TokenBatch {
        let lens: Vec<usize> = rows
            .iter()
            .map(|&row| {
                self.mask[row * self.len..(row + 1) * self.len]
                    .iter()
                    .filter(|&&m| m != 0)
                    .count()
            })
            .collect();
        let len = lens.iter().copied().max().unwrap_or(0);
        let mut out = TokenBatch {
            n_texts: rows.len(),
            len,
            ids: Vec::with_capacity(rows.len() * len),
            type_ids: Vec::with_capacity(rows.len() * len),
            mask: Vec::with_capacity(rows.len() * len),
        };
        for &row in rows {
            let start = row * self.len;
            out.ids.extend_from_slice(&self.ids[start..start + len]);
            out.type_ids
                .extend_from_slice(&self.type_ids[start..start + len]);
            out.mask.extend_from_slice(&self.mask[start..start + len]);
        }
        out
    }

    /// Token ids `[n, len]`, segment ids `[n, len]` and the mask `[n, len]` (as floats) on
    /// `device`.
    pub fn tensors(&self, device: &Device) -> (Tensor<2, Int>, Tensor<2, Int>, Tensor<2>) {
        let shape = [self.n_texts, self.len];
        let ints = |values: &[u32]| {
            let values: Vec<i64> = values.iter().map(|&v| i64::from(v)).collect();
            Tensor::<2, Int>::from_data(TensorData::new(values, shape), device)
        };
        let mask: Vec<f32> = self.mask.iter().map(|&m| m as f32).collect();
        (
            ints(&self.ids),
            ints(&self.type_ids),
            Tensor::<2>::from_data(TensorData::new(mask, shape), device),
        )
    }
}
