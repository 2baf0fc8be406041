//! What a forecast is about and says (kept apart from the use cases in `forecasts`, so
//! the app's state can hold the last ones computed without importing the use cases).

use std::sync::Arc;

use jiff::Timestamp;
use keyward_core::alert::AlertSubject;
use keyward_core::forecast::Forecast;
use keyward_core::service::LimitUnit;
use serde::Serialize;

/// What runs out: a quota in a unit, or a budget in dollars.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Allowance {
    Quota {
        unit: LimitUnit,
        window_seconds: u64,
    },
    Budget {
        period: keyward_core::budget::BudgetPeriod,
    },
}

/// One allowance of one key or token, and its forecast.
#[derive(Debug, Clone, PartialEq)]
pub struct AllowanceForecast {
    pub subject: AlertSubject,
    /// The key's alias or the token's name.
    pub name: String,
    pub allowance: Allowance,
    pub window_start: Timestamp,
    pub forecast: Forecast,
}

impl AllowanceForecast {
    /// Share of the allowance used (0–1+).
    pub fn used_share(&self) -> f64 {
        if self.forecast.limit > 0.0 {
            self.forecast.used / self.forecast.limit
        } else {
            0.0
        }
    }
}

/// The last forecasts computed on this instance, and when.
pub type ForecastCache = tokio::sync::Mutex<Option<(Timestamp, Arc<Vec<AllowanceForecast>>)>>;
