//! Fuzzes query planning and evaluation over small models: the plan's index bounds and
//! residual select what the whole condition does, and `total`, LIMIT and OFFSET agree. The
//! checks are in `concord_fuzz::query::check_query_plan`.

#![no_main]

use concord_fuzz::query::{PlanInput, check_query_plan};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: PlanInput| check_query_plan(&input));
