// The many-tabs module against the package's declarations (compiled by `cargo xtask web`).
import init, * as concord from "concord-web";
import type { ConcordError, ModelEvent, JsonValue } from "concord-web";
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
  // Other sessions' references cross tabs; histories and this client's references do not.
  console.log(await model.references());
  // @ts-expect-error: not part of a tab handle (it rejects with not_available_in_tab)
  void domain.models().history;
  // @ts-expect-error: likewise
  void items?.indexReference;
  try {
    await (domain.models() as unknown as concord.ModelService).history("todos");
  } catch (e) {
    if ((e as ConcordError).code === "not_available_in_tab") console.log("as documented");
  }
  const stop = model.onEvent((event: ModelEvent) => console.log(event.type));
  stop();
  const state: concord.ConnectionState = await domain.state();
  console.log(state);
  return await model.value();
}
