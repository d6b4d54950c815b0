// Package e2e holds the end-to-end test of cm4agent on a real arm64 kernel
// in QEMU (see qemu_test.go); it has no non-test code.
package e2e
