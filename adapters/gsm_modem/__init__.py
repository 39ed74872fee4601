"""SMS through a serial GSM/4G modem or a Tiantong satellite phone (3GPP TS 27.005, PDU mode):
:mod:`.pdu` (SMS-SUBMIT / SMS-DELIVER / SMS-STATUS-REPORT), :mod:`.errors` (+CMS / +CME
codes), :mod:`.reassembly`, :mod:`.adapter`, :mod:`.settings`, and :mod:`.simulator`."""
