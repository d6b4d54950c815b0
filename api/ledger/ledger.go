// Package ledger writes the provisioning ledger's export formats: CSV (RFC
// 4180, one header row) and JSON lines. Rows stream through; nothing is
// held but the row being written.
package ledger

import (
	"encoding/csv"
	"encoding/json"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/cm4bench/cm4bench/internal/contract"
)

// Header is the CSV header row.
var Header = []string{"id", "time", "station", "slot", "operator", "mac", "macs", "serial", "model", "revision",
	"bootloader", "emmc_bytes", "emmc_cid", "emmc_csd", "action_id", "recipe", "recipe_version", "rule", "image",
	"image_sha256", "values", "files", "started", "netboot_s", "register_s", "write_s", "verify_s", "customise_s",
	"total_s", "wire_bytes", "written_bytes", "result", "error"}

// Record is a row as CSV fields, in Header's order. Lists are joined with
// ";" and pairs with "=" (values: pool=value, files: path=sha256).
func Record(r contract.LedgerRow) []string {
	var vals, files []string
	for _, v := range r.Values {
		vals = append(vals, v.Pool+"="+v.Value)
	}
	for _, f := range r.Files {
		files = append(files, f.Path+"="+f.SHA256)
	}
	sec := func(f float64) string { return strconv.FormatFloat(f, 'f', 3, 64) }
	return []string{strconv.FormatInt(r.ID, 10), r.Time.UTC().Format(time.RFC3339Nano), r.Station, r.Slot, r.Operator,
		r.MAC, strings.Join(r.MACs, ";"), r.Serial, r.Model, r.Revision, r.Bootloader, strconv.FormatInt(r.EMMCBytes, 10),
		r.EMMCCID, r.EMMCCSD, r.ActionID, r.Recipe, strconv.Itoa(r.RecipeVersion), r.Rule, r.Image, r.ImageSHA256,
		strings.Join(vals, ";"), strings.Join(files, ";"), r.Started.UTC().Format(time.RFC3339Nano),
		sec(r.Seconds.Netboot), sec(r.Seconds.Register), sec(r.Seconds.Write), sec(r.Seconds.Verify), sec(r.Seconds.Customise),
		sec(r.Seconds.Total), strconv.FormatInt(r.WireBytes, 10), strconv.FormatInt(r.WrittenBytes, 10), r.Result, r.Error}
}

// Writer writes rows in one format.
type Writer interface {
	Write(contract.LedgerRow) error
	Flush() error
}

// NewWriter returns a writer for format "csv" or "jsonl".
func NewWriter(w io.Writer, format string) (Writer, error) {
	switch format {
	case "csv":
		cw := csv.NewWriter(w)
		cw.UseCRLF = true // RFC 4180
		if err := cw.Write(Header); err != nil {
			return nil, err
		}
		return &csvWriter{cw}, nil
	case "jsonl":
		return &jsonlWriter{enc: json.NewEncoder(w)}, nil
	}
	return nil, fmt.Errorf("ledger: format %q: want csv or jsonl", format)
}

type csvWriter struct{ w *csv.Writer }

func (c *csvWriter) Write(r contract.LedgerRow) error { return c.w.Write(Record(r)) }
func (c *csvWriter) Flush() error                     { c.w.Flush(); return c.w.Error() }

type jsonlWriter struct{ enc *json.Encoder }

func (j *jsonlWriter) Write(r contract.LedgerRow) error { return j.enc.Encode(r) }
func (j *jsonlWriter) Flush() error                     { return nil }
