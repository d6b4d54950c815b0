package firmware_test

import (
	"fmt"
	"os"

	"github.com/cm4bench/cm4bench/firmware"
)

// Reading a boot stage out of usbboot's bootfiles.bin.
func ExampleParseBootFiles() {
	data, err := os.ReadFile("../../shared/firmware-fixtures/bootfiles.bin")
	if err != nil {
		fmt.Println(err)
		return
	}
	bf, err := firmware.ParseBootFiles(data)
	if err != nil {
		fmt.Println(err)
		return
	}
	m, _ := bf.Lookup("2711", "bootcode4.bin")
	fmt.Println(m.Name, m.Size, len(bf.Members()))
	// Output: 2711/bootcode4.bin 73120 26
}

// The sets of the embedded catalogue.
func ExampleDefault() {
	cat, err := firmware.Default()
	if err != nil {
		fmt.Println(err)
		return
	}
	files, _ := cat.SetFiles("recovery")
	for _, f := range files {
		fmt.Println(f.Name, f.File.Size)
	}
	fmt.Println(cat.SetNames())
	// Output:
	// boot.conf 414
	// bootcode4.bin 100140
	// config.txt 254
	// pieeprom.original.bin 524288
	// [bootfiles eeprom msd netboot recovery]
}
