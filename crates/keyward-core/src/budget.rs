//! Money budgets, for app tokens and for keys: a cap in integer micro-dollars per day or
//! calendar month (money never goes through floats in storage), and the conversions at the
//! edges where people type dollars.

use serde::{Deserialize, Serialize};

use crate::Error;

/// Which calendar period a budget covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BudgetPeriod {
    Day,
    Month,
}

/// A spending cap in micro-dollars (integers: money never goes through floats in storage).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Budget {
    pub limit_micros: u64,
    pub period: BudgetPeriod,
}

/// Largest accepted budget: one billion dollars per period.
pub const BUDGET_MAX_MICROS: u64 = 1_000_000_000 * 1_000_000;

/// Dollars to micro-dollars, refusing negatives, NaN and absurd amounts.
pub fn usd_to_micros(usd: f64) -> Result<u64, Error> {
    let micros = (usd * 1_000_000.0).round();
    if !micros.is_finite() || micros < 0.0 || micros > BUDGET_MAX_MICROS as f64 {
        return Err(Error::invalid(
            "invalid_budget",
            "budget_usd must be between 0 and 1,000,000,000",
        ));
    }
    #[expect(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        reason = "range checked above"
    )]
    Ok(micros as u64)
}

pub fn micros_to_usd(micros: u64) -> f64 {
    #[expect(
        clippy::cast_precision_loss,
        reason = "budgets are far below 2^53 micro-dollars"
    )]
    let usd = micros as f64 / 1_000_000.0;
    usd
}
