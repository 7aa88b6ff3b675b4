// Validates Gateway API objects against the schemas @kubernetes-models/gateway-api publishes (generated from the
// Gateway API CRDs' OpenAPI schemas). Reads a JSON array of objects on stdin; prints a JSON array with one entry per
// object: {"kind", "name", "errors"}, errors empty when the object is valid. Exits 2 on a kind it has no schema for.
import { readFileSync } from "node:fs";

const objects = JSON.parse(readFileSync(0, "utf8"));
const results = [];
for (const object of objects) {
  const [group, version] = object.apiVersion.split("/");
  let Model;
  try {
    ({ [object.kind]: Model } = await import(`@kubernetes-models/gateway-api/${group}/${version}/${object.kind}`));
  } catch (error) {
    console.error(`no schema for ${object.apiVersion} ${object.kind}: ${error.message}`);
    process.exit(2);
  }
  let errors = [];
  try {
    new Model(object).validate();
  } catch (error) {
    errors = (error.errors ?? [error]).map((e) => `${e.instancePath ?? ""} ${e.message}`.trim());
  }
  results.push({ kind: object.kind, name: object.metadata?.name, errors });
}
console.log(JSON.stringify(results));
