//! Fuzzes query planning and evaluation over small models: the plan's index bounds and
//! residual select what the whole condition does, `total`, LIMIT and OFFSET agree, and the
//! server's query host (online) answers as the offline evaluation over the models the user
//! may read does. The checks are `concord_fuzz::query::check_query_plan` and
//! `check_online_offline`.

#![no_main]

use concord_fuzz::query::{PlanInput, check_online_offline, check_query_plan};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: PlanInput| {
    check_query_plan(&input);
    let _ = check_online_offline(&input);
});
