// The many-tabs module against the package's declarations (compiled by `cargo xtask web`).
import init, * as concord from "concord-web";
import type { ModelEvent, JsonValue } from "concord-web";
import { openTabs, type TabDomain, type TabElement } from "concord-web/tabs";

export async function tabs(url: string, token: string): Promise<JsonValue> {
  await init();
  const domain: TabDomain = await openTabs(concord, url, {
    user: "alice",
    token,
    onRole: (role: "owner" | "follower") => console.log(role),
  });
  const model = await domain.models().open("todos");
  const items: TabElement | undefined = await model.root().get("items");
  if (items) {
    const seq: number = await items.push({ text: "milk", done: false });
    const marks = await model.watermarks();
    console.log(seq <= marks.stored, items.id(), model.collection());
  }
  const stop = model.onEvent((event: ModelEvent) => console.log(event.type));
  stop();
  const state: concord.ConnectionState = await domain.state();
  console.log(state);
  return await model.value();
}
