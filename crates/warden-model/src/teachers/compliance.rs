//! compliance-checker's reference: code-clause text built from templates that each invoke one
//! design rule, mixed with distractor sentences that invoke none, so the encoder learns which
//! rules a clause calls for. The rules' deterministic checks (utilisation ≤ 1, deflection
//! within span/360, slenderness ≤ 180, fire resistance ≥ required) stay in the model module.
//!
//! Source: the phrasing follows the way EN 1990/1993, BS 5950 and the IBC word these
//! requirements ("shall not exceed span/360", "the design resistance shall be at least the
//! design effect", "slenderness ratio", "fire resistance period"); the sentences are this
//! project's own, not quotations.
//!
//! Assumptions: a clause invokes a rule exactly when it contains one of that rule's sentences;
//! distractors (general requirements, workmanship, documentation) never do, even when they
//! share words such as "members", "load" or "shall"; sentence order is free.

use super::Rng;

pub const RULES: [&str; 4] = ["strength", "deflection", "slenderness", "fire"];

const STRENGTH: [&str; 8] = [
    "The design resistance of each member shall be at least the design effect of the actions.",
    "Members shall be proportioned so that the utilisation under factored loads does not exceed unity.",
    "The bending, shear and axial capacity of the {m} shall exceed the ultimate design forces.",
    "Ultimate limit state verification of {m} strength is required for every load combination.",
    "The factored moment in the {m} shall not be greater than its moment capacity.",
    "Cross sections shall be checked for combined bending and axial force at the ultimate limit state.",
    "Structural adequacy of the {m} shall be demonstrated by a capacity check against ultimate loads.",
    "No element shall be stressed beyond its design strength under the governing combination.",
];
const DEFLECTION: [&str; 8] = [
    "The deflection of {m} under imposed load shall not exceed span/360.",
    "Vertical deflections at the serviceability limit state shall be limited to span over 360.",
    "The {m} shall be stiff enough that the imposed load deflection stays within the span divided by 360.",
    "Sagging of floor {m} under service loads must remain below the permitted deflection limit.",
    "Serviceability: the midspan deflection of the {m} shall be checked against the limit of span/360.",
    "Excessive deflection of the {m} that could damage finishes shall be prevented.",
    "The calculated deflection of cantilevers and spans shall satisfy the serviceability criteria.",
    "Deformation of the {m} under the characteristic combination shall not exceed the stated limit.",
];
const SLENDERNESS: [&str; 8] = [
    "The slenderness ratio of compression {m} shall not exceed 180.",
    "Compression members shall have an effective length to radius of gyration ratio of no more than 180.",
    "The {m} shall be checked for buckling, with slenderness limited to 180.",
    "Limiting slenderness applies to struts and columns carrying axial compression.",
    "The ratio of effective length to least radius of gyration of the {m} is limited.",
    "Slender compression {m} shall be avoided; the slenderness shall be within the code limit.",
    "Struts shall be sufficiently stocky that their slenderness does not exceed the permitted value.",
    "Effective buckling lengths of the {m} shall be assessed and the slenderness verified.",
];
const FIRE: [&str; 8] = [
    "Members shall have adequate fire resistance for the required period.",
    "The fire resistance of the {m} shall be no less than the period required for the building.",
    "Structural {m} shall achieve the required fire rating in minutes of standard fire exposure.",
    "Fire protection shall be provided so the {m} retain load bearing capacity for the specified duration.",
    "The {m} shall resist a standard fire for the period stated in the fire strategy.",
    "Intumescent coating thickness shall give the fire resistance period required.",
    "Elements of structure shall meet the minimum periods of fire resistance.",
    "Load bearing {m} shall maintain stability in fire for the required resistance time.",
];
const DISTRACTORS: [&str; 12] = [
    "All work shall be carried out by competent persons in accordance with the specification.",
    "Drawings shall be submitted to the engineer for review before fabrication.",
    "The contractor shall keep the site clean and free of debris.",
    "Bolts shall be tightened in a systematic sequence from the centre of the joint outwards.",
    "Members shall be marked with their piece number before delivery.",
    "Steel shall be stored off the ground and protected from the weather.",
    "Welding procedures shall be qualified and welders certified.",
    "Loads during erection shall be considered by the erector in the method statement.",
    "As-built records shall be provided on completion of the works.",
    "The {m} shall be painted with one coat of primer in the shop.",
    "Holes shall be drilled or punched full size and free of burrs.",
    "Surfaces in contact shall be clean and free of loose mill scale.",
];
const MEMBERS: [&str; 6] = [
    "beams", "columns", "members", "girders", "rafters", "joists",
];

fn fill(template: &str, rng: &mut Rng) -> String {
    let member: &&str = rng.pick(&MEMBERS);
    template.replace("{m}", member)
}

/// A clause and the rules it invokes (in [`RULES`] order).
#[derive(Debug, Clone, PartialEq)]
pub struct Clause {
    pub text: String,
    pub invokes: [bool; 4],
}

/// Words as the encoder's tokenizer splits them (alphanumeric runs).
pub fn word_count(text: &str) -> usize {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .count()
}

/// A clause of 0–3 rule sentences and 0–2 distractors in random order, at most `max_words`
/// words (the encoder reads no more, so a rule past the cut would be a label it cannot see).
/// Held-out sets are fresh draws: new combinations, orders and member words of the same
/// sentence banks, not new wording.
pub fn sample(rng: &mut Rng, max_words: usize) -> Clause {
    let banks = [&STRENGTH, &DEFLECTION, &SLENDERNESS, &FIRE];
    loop {
        let mut invokes = [false; 4];
        let mut sentences = Vec::new();
        for (r, bank) in banks.iter().enumerate() {
            if rng.chance(0.4) {
                invokes[r] = true;
                let template = *rng.pick(&bank[..]);
                sentences.push(fill(template, rng));
            }
        }
        let distractors = rng.int(if sentences.is_empty() { 1 } else { 0 }, 2);
        for _ in 0..distractors {
            let template = *rng.pick(&DISTRACTORS[..]);
            sentences.push(fill(template, rng));
        }
        // Fisher–Yates so the rule sentences are not always first.
        for i in (1..sentences.len()).rev() {
            let j = (rng.next_u64() % (i as u64 + 1)) as usize;
            sentences.swap(i, j);
        }
        let text = sentences.join(" ");
        if word_count(&text) <= max_words {
            return Clause { text, invokes };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clauses_carry_their_rules_and_stay_within_the_token_budget() {
        let mut rng = Rng::new(11);
        let mut counts = [0usize; 4];
        for _ in 0..1000 {
            let c = sample(&mut rng, 64);
            assert!(!c.text.trim().is_empty());
            assert!(word_count(&c.text) <= 64, "{}", c.text);
            for (r, on) in c.invokes.iter().enumerate() {
                counts[r] += *on as usize;
            }
        }
        assert!(counts.iter().all(|&n| n > 250), "{counts:?}");
    }

    #[test]
    fn a_distractor_alone_invokes_nothing() {
        let mut rng = Rng::new(12);
        let none = (0..200)
            .map(|_| sample(&mut rng, 64))
            .filter(|c| c.invokes == [false; 4])
            .count();
        assert!(none > 0);
    }
}
