package console

import "errors"

// errCrossSite: a POST whose Origin or Sec-Fetch-Site says it did not come
// from the console's own pages. It is refused with 403 and changes
// nothing.
var errCrossSite = errors.New("the request did not come from a console page (cross-site request refused); reload the page and try again")
