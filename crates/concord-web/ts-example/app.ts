// A small app against the package's declarations, compiled with `tsc --strict` by
// `cargo xtask web`: it fails to compile if a value, event or error loses its type.
import init, {
  Domain,
  IdbStorageAdapter,
  type ConcordError,
  type DomainEvent,
  type ElementEvent,
  type Identity,
  type JsonValue,
  type ModelEvent,
  type RealTimeElement,
  type RealTimeModel,
} from "concord-web";

/** Every model event named, so that a new kind of event fails to compile here. */
function describe(event: ModelEvent): string {
  switch (event.type) {
    case "changed":
      return `${event.element} changed${event.local ? "" : ` by ${event.user ?? event.author}`}`;
    case "stored":
      return `stored up to ${event.seq}`;
    case "acknowledged":
      return `acknowledged up to ${event.seq} (version ${event.version})`;
    case "neutralised":
      return `no-ops: ${event.seqs.join(", ")}`;
    case "rejected":
      return `rejected ${event.seqs.length}: ${event.error.code}`;
    case "collaboratorOpened":
      return `${event.user} opened it`;
    case "collaboratorClosed":
      return `${event.user} (${event.session}) closed it`;
    case "referenceRefused":
      return `${event.key} refused: ${event.error.code}`;
    case "permissionsChanged":
      return `may write: ${event.permissions.write}`;
    case "remoteReference":
      return `${event.user ?? event.session}'s ${event.key}: ${event.change} ${JSON.stringify(event.value)}`;
    case "gone":
      return `gone: ${event.error.message}`;
    case "modified":
    case "committed":
    case "resyncStarted":
    case "resyncCompleted":
    case "online":
    case "offline":
    case "released":
      return event.type;
    default: {
      const unknown: never = event;
      return unknown;
    }
  }
}

function status(event: DomainEvent): string | undefined {
  switch (event.type) {
    case "state":
      return event.state;
    case "syncProgress":
      return `${event.done + event.failed}/${event.total}`;
    case "connectionRefused":
      return `refused (${event.error.code}), retry: ${event.retryAllowed}`;
    default:
      return undefined;
  }
}

function isConcordError(e: unknown): e is ConcordError {
  return e instanceof Error && e.name === "ConcordError";
}

async function titleOf(model: RealTimeModel): Promise<string> {
  const title: RealTimeElement | undefined = await model.root().get("title");
  const value: JsonValue = title ? await title.value() : null;
  return typeof value === "string" ? value : "";
}

export async function main(url: string, token: string): Promise<void> {
  await init();
  const domain = new Domain(url, { offline: { storage: new IdbStorageAdapter() } });
  const stop = domain.onEvent((e) => console.log(status(e)));
  await domain.initializeOffline("alice");
  const session = await domain.connectWithJwt(token);
  console.log(`session ${session.session} of ${session.user}`);

  const models = domain.models();
  const id = await models.create("notes", { title: "", tags: [], body: "" });
  const model = await models.open(id);
  model.onEvent((e) => console.log(describe(e)));
  const tags = await model.root().get("tags");
  tags?.onEvent((e: ElementEvent) => console.log(e.type, e.local));
  await tags?.push("new");
  await tags?.move(0, 0);
  const body = await model.root().get("body");
  const seq = await model.batch([
    { element: model.root().id(), op: "set", key: "title", value: "Hello 👋" },
    { element: body?.id() ?? "", op: "splice", index: 0, deleteCount: 0, text: "…" },
  ]);
  await model.stored(seq);
  const marks = model.watermarks();
  console.log(`${marks.last} ${marks.stored} ${marks.acknowledged}`, await titleOf(model));

  const cursor = body?.indexReference("cursor");
  await cursor?.share();
  await cursor?.set(1);
  for (const r of await model.references()) console.log(r.session, r.key, r.value);
  for (const c of await model.collaborators()) console.log(c.user, new Date(c.since));
  const me: Identity | null = await domain.identity().user("alice");
  const people: Identity[] = await domain.identity().search("al", 5);
  console.log(me?.displayName, me?.email, people.map((i) => i.user));

  const found = await models.queryWith("SELECT title FROM notes WHERE title LIKE 'H%'", "store");
  for (const row of found.rows) {
    const title: JsonValue | undefined = row.select === "paths" ? row.values[0] : row.data["title"];
    console.log(row.model, row.version, title, found.origin === "store");
  }
  try {
    await models.query("SELECT FROM");
  } catch (e) {
    if (isConcordError(e) && e.code === "invalid_query") console.log(e.position?.line);
  }

  try {
    await models.open("no such model");
  } catch (e) {
    if (isConcordError(e) && e.code === "model_not_found") console.log("as expected");
    else throw e;
  }
  stop();
  await domain.close();
}
