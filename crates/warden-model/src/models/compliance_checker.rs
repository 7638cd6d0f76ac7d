//! compliance-checker: a small BERT-style transformer encoder reads a code clause and says which
//! design rules it invokes; deterministic rules then check the design values and give reasons.
//!
//! Tokenisation is a fixed hashing tokenizer (lower-cased alphanumeric words, FNV-1a into
//! [`VOCAB`] ids), so no vocabulary file is needed. Sequences are padded to a fixed length and
//! padding is masked out of attention.

use super::{Net, SelfAttention, num, rows};
use crate::fields::{self, Field, Kind};
use crate::schema::{Sample, SchemaError};
use serde_json::{Value, json};
use tch::nn::{self, Module};
use tch::{Device, Kind as TKind, TchError, Tensor};

pub const NAME: &str = "compliance-checker";
pub const VOCAB: i64 = 4096;
/// Tokens kept from a clause (after the leading [CLS]).
pub const MAX_TOKENS: usize = 64;
pub const MAX_CLAUSE_CHARS: usize = 2000;
const SEQ: usize = MAX_TOKENS + 1;
const CLS: i64 = 1;
const DIM: i64 = 32;
const LAYERS: usize = 2;

pub const RULES: [&str; 4] = ["strength", "deflection", "slenderness", "fire"];

/// Checks one rule against the design values; `(pass, reason)`.
pub fn check_rule(rule: usize, d: &[f32]) -> (bool, String) {
    match rule {
        0 => (
            d[0] <= 1.0,
            format!(
                "utilisation {:.3} {} 1.0",
                d[0],
                if d[0] <= 1.0 { "<=" } else { ">" }
            ),
        ),
        1 => (
            d[1] >= 360.0,
            format!(
                "deflection span/{:.0} {} span/360",
                d[1],
                if d[1] >= 360.0 { "within" } else { "exceeds" }
            ),
        ),
        2 => (
            d[2] <= 180.0,
            format!(
                "slenderness {:.1} {} 180",
                d[2],
                if d[2] <= 180.0 { "<=" } else { ">" }
            ),
        ),
        _ => (
            d[3] >= d[4],
            format!(
                "fire resistance {:.0} min {} required {:.0} min",
                d[3],
                if d[3] >= d[4] { ">=" } else { "<" },
                d[4]
            ),
        ),
    }
}

/// Lower-cased alphanumeric words hashed (FNV-1a) into `2..VOCAB`; 0 is padding, 1 is [CLS].
pub fn tokenize(text: &str) -> Vec<i64> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .take(MAX_TOKENS)
        .map(|w| {
            let mut h: u64 = 0xcbf2_9ce4_8422_2325;
            for b in w.to_lowercase().bytes() {
                h ^= b as u64;
                h = h.wrapping_mul(0x0100_0000_01b3);
            }
            2 + (h % (VOCAB as u64 - 2)) as i64
        })
        .collect()
}

pub fn example() -> Value {
    json!({
        "clause": "The deflection of beams under imposed load shall not exceed span/360 and \
                   members shall have adequate fire resistance.",
        "design": {"utilisation": 0.82, "deflection_ratio": 410.0, "slenderness": 95.0,
                   "fire_resistance_min": 60.0, "required_fire_resistance_min": 90.0}
    })
}

pub const DESIGN: [Field; 5] = [
    Field::number(
        "utilisation",
        0.0,
        100.0,
        "design effect / design resistance",
    ),
    Field::number(
        "deflection_ratio",
        1.0,
        100000.0,
        "span / calculated deflection (e.g. 410 for span/410)",
    ),
    Field::number(
        "slenderness",
        0.0,
        10000.0,
        "effective length / radius of gyration",
    ),
    Field::number(
        "fire_resistance_min",
        0.0,
        600.0,
        "provided fire resistance, minutes",
    ),
    Field::number(
        "required_fire_resistance_min",
        0.0,
        600.0,
        "required fire resistance, minutes",
    ),
];
pub const FIELDS: [Field; 2] = [
    Field::new(
        "clause",
        Kind::Text {
            max_chars: MAX_CLAUSE_CHARS,
        },
        "the code clause, plain text (the first 64 words are read)",
    ),
    Field::new(
        "design",
        Kind::Object(&DESIGN),
        "the design values the rules check",
    ),
];

const RULE_NAMES: Kind = Kind::Enum(&RULES);
const RULE_OUT: [Field; 5] = [
    Field::new("rule", RULE_NAMES, "the rule"),
    Field::number(
        "applies_probability",
        0.0,
        1.0,
        "the encoder's probability that the clause invokes the rule",
    ),
    Field::new("applies", Kind::Boolean, "applies_probability ≥ 0.5"),
    Field::new(
        "pass",
        Kind::Boolean,
        "the deterministic check of the design values",
    ),
    Field::new(
        "reason",
        Kind::Text {
            max_chars: usize::MAX,
        },
        "the check with its numbers",
    ),
];
const RULE_KIND: Kind = Kind::Object(&RULE_OUT);
pub const OUTPUT: [Field; 3] = [
    Field::new(
        "rules",
        Kind::Array {
            items: &RULE_KIND,
            min_items: 4,
            max_items: 4,
        },
        "one per rule: strength, deflection, slenderness, fire",
    ),
    Field::new(
        "pass",
        Kind::Boolean,
        "every rule the clause invokes passes",
    ),
    Field::integer("tokens", 0, MAX_TOKENS as i64, "words read from the clause"),
];

pub fn input_schema() -> Value {
    fields::document(
        NAME,
        "A code clause and the design values to check.",
        &FIELDS,
    )
}

pub fn output_schema() -> Value {
    fields::output_document(
        NAME,
        "Which rules the clause invokes and whether they pass.",
        &OUTPUT,
    )
}

pub fn parse(body: &Value) -> Result<Sample, SchemaError> {
    let root = fields::object(body, "", &FIELDS)?;
    let [clause_f, design_f] = &FIELDS;
    let clause = clause_f.read_text(root, "")?;
    let design = design_f.read_object(root, "")?;
    let mut warnings = Vec::new();
    let mut values = Vec::with_capacity(DESIGN.len());
    for f in &DESIGN {
        values.push(f.read_number(design, "design", &mut warnings)?);
    }
    let words = tokenize(clause);
    if words.is_empty() {
        return Err(SchemaError::new("clause", "empty", "contains no words"));
    }
    let all_words = crate::teachers::compliance::word_count(clause);
    if all_words > MAX_TOKENS {
        warnings.push(format!(
            "clause has {all_words} words; only the first {MAX_TOKENS} are read"
        ));
    }
    let mut tokens = vec![0i64; SEQ];
    tokens[0] = CLS;
    tokens[1..=words.len()].copy_from_slice(&words);
    Ok(Sample {
        values,
        shape: vec![DESIGN.len() as i64],
        tokens,
        warnings,
    })
}

/// Token ids `[n, SEQ]` of a batch.
pub fn token_tensor(batch: &[&Sample], device: Device) -> Result<Tensor, TchError> {
    let n = batch.len() as i64;
    let ids: Vec<i64> = batch
        .iter()
        .flat_map(|s| s.tokens.iter().copied())
        .collect();
    Tensor::from_slice(&ids)
        .f_view([n, SEQ as i64])?
        .f_to_device(device)
}

#[derive(Debug)]
struct EncoderLayer {
    attention: SelfAttention,
    norm1: nn::LayerNorm,
    ff1: nn::Linear,
    ff2: nn::Linear,
    norm2: nn::LayerNorm,
}

#[derive(Debug)]
pub struct ComplianceNet {
    tokens: nn::Embedding,
    positions: nn::Embedding,
    layers: Vec<EncoderLayer>,
    rule_head: nn::Linear,
}

impl ComplianceNet {
    /// Per-rule logits `[n, RULES]` for token ids `[n, SEQ]` (padding is id 0).
    pub fn logits(&self, ids: &Tensor) -> Result<Tensor, TchError> {
        let valid = ids.f_ne(0)?;
        let pos = Tensor::arange(SEQ as i64, (TKind::Int64, ids.device()));
        let mut h = self.tokens.forward(ids) + self.positions.forward(&pos).f_unsqueeze(0)?;
        for layer in &self.layers {
            h = layer
                .norm1
                .forward(&(&h + layer.attention.forward(&h, &valid)?));
            let ff = layer.ff2.forward(&layer.ff1.forward(&h).gelu("none"));
            h = layer.norm2.forward(&(&h + ff));
        }
        Ok(self.rule_head.forward(&h.f_select(1, 0)?))
    }
}

impl Net for ComplianceNet {
    fn build(p: &nn::Path) -> Self {
        let layers = (0..LAYERS)
            .map(|i| {
                let l = p / format!("layer{i}");
                EncoderLayer {
                    attention: SelfAttention::new(&(&l / "attention"), DIM, 2),
                    norm1: nn::layer_norm(&l / "norm1", vec![DIM], Default::default()),
                    ff1: nn::linear(&l / "ff1", DIM, 2 * DIM, Default::default()),
                    ff2: nn::linear(&l / "ff2", 2 * DIM, DIM, Default::default()),
                    norm2: nn::layer_norm(&l / "norm2", vec![DIM], Default::default()),
                }
            })
            .collect();
        ComplianceNet {
            tokens: nn::embedding(p / "tokens", VOCAB, DIM, Default::default()),
            positions: nn::embedding(p / "positions", SEQ as i64, DIM, Default::default()),
            layers,
            rule_head: nn::linear(p / "rule_head", DIM, RULES.len() as i64, Default::default()),
        }
    }

    fn run(&self, batch: &[&Sample], device: Device) -> Result<Vec<Value>, TchError> {
        let ids = token_tensor(batch, device)?;
        let applies = rows(&self.logits(&ids)?.f_sigmoid()?)?;
        Ok(batch
            .iter()
            .zip(applies)
            .map(|(s, p)| {
                let mut all_pass = true;
                let rules: Vec<Value> = RULES
                    .iter()
                    .enumerate()
                    .map(|(r, name)| {
                        let (pass, reason) = check_rule(r, &s.values);
                        let applies = p[r] >= 0.5;
                        all_pass &= pass || !applies;
                        json!({"rule": name, "applies_probability": num(p[r]), "applies": applies,
                               "pass": pass, "reason": reason})
                    })
                    .collect();
                let words = s.tokens.iter().filter(|&&t| t > CLS).count();
                json!({"rules": rules, "pass": all_pass, "tokens": words})
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokenizer_is_stable_and_bounded() {
        let a = tokenize("Deflection shall not exceed span/360.");
        assert_eq!(a, tokenize("deflection SHALL not exceed span 360"));
        assert_eq!(a.len(), 6);
        assert!(a.iter().all(|&t| (2..VOCAB).contains(&t)));
        assert_eq!(tokenize(&"w ".repeat(500)).len(), MAX_TOKENS);
    }

    #[test]
    fn rules_pass_and_fail_with_reasons() {
        let d = [1.2, 400.0, 100.0, 60.0, 90.0];
        assert!(!check_rule(0, &d).0);
        assert!(check_rule(1, &d).0);
        assert!(check_rule(2, &d).0);
        let (pass, reason) = check_rule(3, &d);
        assert!(!pass);
        assert!(reason.contains("required 90"));
    }
}
