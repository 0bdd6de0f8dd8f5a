package schemas

import _ "embed"

// EventSchema is the JSON Schema (draft 2020-12) of a normalized event, the
// body of every queue message and of every delivery to a backend.
//
//go:embed event.schema.json
var EventSchema []byte
